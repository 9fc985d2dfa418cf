"""The backends: every Vault request (``vault``) and every PKCS#11 call (``hsm``) of keyops."""
