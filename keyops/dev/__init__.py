"""The local development stack (OpenBao and SoftHSM2); never imported by the library."""
