"""The nonce table of the database replay store."""

from django.db import migrations, models


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="UsedNonce",
            fields=[
                ("nonce", models.CharField(max_length=32, primary_key=True, serialize=False)),
                ("expires_at", models.FloatField(db_index=True)),
            ],
            options={"db_table": "mtls_proxy_used_nonce"},
        ),
    ]
