"""Offline verification of device attestation evidence (issue 11, build item 1).

- ``android.verify_android``: Android Key Attestation certificate chains.
- ``ios.verify_ios_attestation`` / ``ios.verify_ios_assertion``: iOS App Attest objects and assertions.

Pure functions: trust anchors (``roots``), the attestation status list (``status``), the time and the
allowed app identities are arguments; every refusal is a ``result.Verdict`` with stable reason codes.
"""
