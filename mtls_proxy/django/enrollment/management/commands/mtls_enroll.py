"""``manage.py mtls_enroll list [--user NAME] [--json]`` and ``mtls_enroll revoke --device ID [--reason R]``.

Exit codes: 0 done, 1 refused (unknown or already revoked device: ``CommandError``), 2 usage.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mtls_proxy.django.enrollment import service
from mtls_proxy.django.enrollment.models import DEVICE_REVOKED, Device
from mtls_proxy.pki.store import REVOCATION_REASONS


class Command(BaseCommand):  # type: ignore[misc]
    help = "List enrolled devices, or revoke one (its certificates go on the CRL at once)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="devices with their latest certificate")
        listing.add_argument("--user", help="only this username")
        listing.add_argument("--json", action="store_true")
        revoke = sub.add_parser("revoke", help="revoke a device and every certificate it has")
        revoke.add_argument("--device", required=True, help="device id (UUID)")
        revoke.add_argument("--reason", choices=list(REVOCATION_REASONS), default="unspecified")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "list":
            self._list(options["user"], options["json"])
        else:
            self._revoke(options["device"], options["reason"])

    def _list(self, username: str | None, as_json: bool) -> None:
        devices = Device.objects.select_related("user").order_by("created_at")
        if username:
            devices = devices.filter(user__username=username)
        rows = []
        for d in devices:
            latest = d.certificates.order_by("-not_before").first()
            rows.append({"device": str(d.pk), "user": d.user.get_username(), "platform": d.platform,
                         "status": d.status, "serial": latest.serial if latest else None,
                         "not_after": latest.not_after.strftime("%Y-%m-%dT%H:%M:%SZ") if latest else None})
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        for r in rows:
            self.stdout.write(f"{r['device']}  {r['user']}  {r['platform']}  {r['status']}  {r['serial']}  "
                              f"{r['not_after']}")

    def _revoke(self, device_id: str, reason: str) -> None:
        try:
            device = Device.objects.get(pk=uuid.UUID(device_id))
        except (ValueError, Device.DoesNotExist):
            raise CommandError(f"no device {device_id!r}") from None
        if device.status == DEVICE_REVOKED:
            raise CommandError(f"device {device.pk} is already revoked")
        count = service.revoke_device(device, reason)
        self.stdout.write(f"revoked device {device.pk} ({count} certificate(s)); the CRL was regenerated")
