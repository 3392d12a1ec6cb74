"""Django admin: devices and certificates, listed and filtered, and a "revoke" action on both.

Revoking regenerates the CRL at once; proxies fetching ``crl`` see it at their next refresh.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages

from mtls_proxy.django.enrollment import service
from mtls_proxy.django.enrollment.models import DEVICE_ACTIVE, Attempt, Device, IssuedCertificate


class IssuedCertificateInline(admin.TabularInline):  # type: ignore[misc]
    model = IssuedCertificate
    fields = ("serial", "not_before", "not_after", "revoked_at", "reason")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):  # type: ignore[misc]
    list_display = ("id", "user", "platform", "status", "created_at", "revoked_at")
    list_filter = ("platform", "status", "created_at")
    search_fields = ("id", "user__username", "certificates__serial")
    readonly_fields = ("id", "user", "platform", "status", "attestation_facts", "app_attest_counter", "created_at",
                       "revoked_at")
    exclude = ("app_attest_public_key",)
    inlines = [IssuedCertificateInline]
    actions = ["revoke"]

    def has_add_permission(self, request: Any) -> bool:
        return False  # devices come from enrollment only

    @admin.action(  # type: ignore[untyped-decorator]
        description="Revoke the selected devices (and all their certificates)", permissions=["change"])
    def revoke(self, request: Any, queryset: Any) -> None:
        devices = list(queryset.filter(status=DEVICE_ACTIVE))
        certificates = sum(service.revoke_device(d) for d in devices)
        self.message_user(request, f"revoked {len(devices)} device(s), {certificates} certificate(s); "
                          "the CRL was regenerated", messages.SUCCESS)


@admin.register(IssuedCertificate)
class IssuedCertificateAdmin(admin.ModelAdmin):  # type: ignore[misc]
    list_display = ("serial", "device", "not_before", "not_after", "revoked_at", "reason")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), "reason", "not_after", "device__platform")
    search_fields = ("serial", "fingerprint_sha256", "device__id", "device__user__username")
    readonly_fields = ("device", "serial", "fingerprint_sha256", "spki_sha256", "not_before", "not_after",
                       "revoked_at", "reason", "created_at")
    exclude = ("der",)
    actions = ["revoke"]

    def has_add_permission(self, request: Any) -> bool:
        return False

    @admin.action(description="Revoke the selected certificates", permissions=["change"])  # type: ignore[untyped-decorator]
    def revoke(self, request: Any, queryset: Any) -> None:
        count = service.revoke_certificates(queryset)
        self.message_user(request, f"revoked {count} certificate(s); the CRL was regenerated", messages.SUCCESS)


@admin.register(Attempt)
class AttemptAdmin(admin.ModelAdmin):  # type: ignore[misc]
    list_display = ("at", "kind", "ok", "reason", "user", "device")
    list_filter = ("kind", "ok", "reason", "at")
    search_fields = ("user__username", "device__id", "reason", "detail")
    readonly_fields = ("at", "kind", "ok", "reason", "detail", "user", "device")

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False
