"""The database replay store's table: one row per used signature nonce, until it expires."""

from __future__ import annotations

from django.db import models


class UsedNonce(models.Model):  # type: ignore[misc]
    """A nonce that was accepted; the primary key makes a second insert fail (that is a replay)."""

    nonce = models.CharField(max_length=32, primary_key=True)
    #: Unix seconds after which no host accepts the signature any more (purged after that).
    expires_at = models.FloatField(db_index=True)

    class Meta:
        db_table = "mtls_proxy_used_nonce"

    def __str__(self) -> str:
        return str(self.nonce)
