//! WireGuard keys as they travel through configuration: 32 bytes, written as
//! hex on the UAPI and as base64 in `wg` output and config files.

use std::fmt;

use base64::Engine;

/// The length of every WireGuard key (private, public, preshared).
pub const KEY_LEN: usize = 32;

/// A 32-byte WireGuard key. Zeroes mean "no key" on the UAPI.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Key(pub [u8; KEY_LEN]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("a key is {KEY_LEN} bytes: {expected} with {len} characters is not one")]
    Length { expected: &'static str, len: usize },
    #[error("a key is written in {0}: it has characters that are not")]
    Encoding(&'static str),
}

impl Key {
    pub fn is_zero(&self) -> bool {
        self.0 == [0; KEY_LEN]
    }

    pub fn from_hex(text: &str) -> Result<Key, KeyError> {
        if text.len() != KEY_LEN * 2 {
            return Err(KeyError::Length {
                expected: "hex",
                len: text.len(),
            });
        }
        let mut key = [0; KEY_LEN];
        hex::decode_to_slice(text, &mut key).map_err(|_| KeyError::Encoding("hex"))?;
        Ok(Key(key))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_base64(text: &str) -> Result<Key, KeyError> {
        let text = text.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| KeyError::Encoding("base64"))?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::Length {
            expected: "base64",
            len: text.len(),
        })?;
        Ok(Key(key))
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// The public key that belongs to this key taken as a private key.
    pub fn public_key(&self) -> Key {
        let secret = boringtun::x25519::StaticSecret::from(self.0);
        Key(boringtun::x25519::PublicKey::from(&secret).to_bytes())
    }
}

/// Keys never print in full: logs and debug output show a short prefix of
/// the base64 form, enough to tell peers apart.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}…)", &self.to_base64()[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64_round_trip() {
        let key = Key([7; KEY_LEN]);
        assert_eq!(Key::from_hex(&key.to_hex()), Ok(key));
        assert_eq!(Key::from_base64(&key.to_base64()), Ok(key));
    }

    #[test]
    fn wrong_length_and_encoding_are_refused() {
        assert!(matches!(
            Key::from_hex("abcd"),
            Err(KeyError::Length { .. })
        ));
        assert_eq!(
            Key::from_hex(&"zz".repeat(32)),
            Err(KeyError::Encoding("hex"))
        );
        assert_eq!(Key::from_base64("!!!"), Err(KeyError::Encoding("base64")));
        assert!(matches!(
            Key::from_base64("AAAA"),
            Err(KeyError::Length { .. })
        ));
    }

    #[test]
    fn public_key_matches_wg_pubkey() {
        // `echo yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk= | wg pubkey`
        let private = Key::from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").unwrap();
        assert_eq!(
            private.public_key().to_base64(),
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
        );
    }
}
