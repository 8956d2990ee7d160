def test_encrypt_decrypt_roundtrip(kms):
    key = kms.create_key(description="smoke")
    blob = kms.encrypt(key.key_id, b"hello", context={"a": "b"})
    assert kms.decrypt(blob.ciphertext_blob, context={"a": "b"}).plaintext == b"hello"
