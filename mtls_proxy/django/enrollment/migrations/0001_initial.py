"""Devices, issued certificates, challenges, attempts and the one CRL row."""

import uuid
from typing import Any

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def create_crl_row(apps: Any, schema_editor: Any) -> None:
    """The one CRL row exists from the start: workers lock it (select_for_update) instead of racing to create it."""
    apps.get_model("mtls_enrollment", "RevocationList").objects.get_or_create(pk=1)


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="RevocationList",
            fields=[
                ("id", models.PositiveSmallIntegerField(default=1, primary_key=True, serialize=False)),
                ("number", models.BigIntegerField(default=0)),
                ("pem", models.TextField(default="")),
                ("this_update", models.DateTimeField(null=True)),
                ("next_update", models.DateTimeField(null=True)),
            ],
            options={
                "db_table": "mtls_enrollment_crl",
            },
        ),
        migrations.CreateModel(
            name="Device",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                (
                    "platform",
                    models.CharField(choices=[("android", "Android"), ("ios", "iOS")], db_index=True, max_length=16),
                ),
                (
                    "status",
                    models.CharField(
                        choices=[("active", "active"), ("revoked", "revoked")],
                        db_index=True,
                        default="active",
                        max_length=16,
                    ),
                ),
                ("attestation_facts", models.JSONField(default=dict)),
                ("app_attest_public_key", models.BinaryField(blank=True, null=True)),
                ("app_attest_counter", models.BigIntegerField(default=0)),
                ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                ("revoked_at", models.DateTimeField(blank=True, null=True)),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="mtls_devices",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "db_table": "mtls_enrollment_device",
                "ordering": ["-created_at"],
            },
        ),
        migrations.CreateModel(
            name="Challenge",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("digest", models.CharField(max_length=64, unique=True)),
                ("created_at", models.DateTimeField(db_index=True)),
                ("expires_at", models.DateTimeField()),
                ("used_at", models.DateTimeField(blank=True, null=True)),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="+", to=settings.AUTH_USER_MODEL
                    ),
                ),
                (
                    "device",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="mtls_enrollment.device",
                    ),
                ),
            ],
            options={
                "db_table": "mtls_enrollment_challenge",
            },
        ),
        migrations.CreateModel(
            name="IssuedCertificate",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("serial", models.CharField(max_length=64, unique=True)),
                ("fingerprint_sha256", models.CharField(max_length=64)),
                ("spki_sha256", models.CharField(max_length=64)),
                ("not_before", models.DateTimeField()),
                ("not_after", models.DateTimeField(db_index=True)),
                ("revoked_at", models.DateTimeField(blank=True, db_index=True, null=True)),
                ("reason", models.CharField(blank=True, default="", max_length=32)),
                ("der", models.BinaryField()),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "device",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="certificates",
                        to="mtls_enrollment.device",
                    ),
                ),
            ],
            options={
                "db_table": "mtls_enrollment_certificate",
                "ordering": ["-not_before"],
            },
        ),
        migrations.CreateModel(
            name="Attempt",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "kind",
                    models.CharField(
                        choices=[("challenge", "challenge"), ("enroll", "enroll"), ("reenroll", "reenroll")],
                        max_length=16,
                    ),
                ),
                ("ok", models.BooleanField()),
                ("reason", models.CharField(blank=True, default="", max_length=64)),
                ("detail", models.TextField(blank=True, default="")),
                ("at", models.DateTimeField(db_index=True)),
                (
                    "user",
                    models.ForeignKey(
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "device",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="mtls_enrollment.device",
                    ),
                ),
            ],
            options={
                "db_table": "mtls_enrollment_attempt",
                "indexes": [models.Index(fields=["user", "kind", "at"], name="mtls_enroll_user_id_28d609_idx")],
            },
        ),
        migrations.RunPython(create_crl_row, migrations.RunPython.noop),
    ]
