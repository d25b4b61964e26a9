//! Base64url without padding: the only binary encoding in JSON and URLs.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::CryptoError;

pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes strictly: padding, standard-alphabet characters and trailing bits
/// are refused, so one value has exactly one spelling.
pub fn decode(text: &str) -> Result<Vec<u8>, CryptoError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| CryptoError::Malformed("base64url"))
}

/// Decodes into a fixed-size array, refusing any other length.
pub fn decode_array<const N: usize>(text: &str) -> Result<[u8; N], CryptoError> {
    decode(text)?
        .try_into()
        .map_err(|_| CryptoError::Malformed("length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_padding_and_foreign_alphabet() {
        assert_eq!(decode(&encode(b"\xfb\xff")).unwrap(), b"\xfb\xff");
        assert!(decode("-_8=").is_err());
        assert!(decode("+/8").is_err());
        assert!(decode_array::<2>("-_8").is_ok());
        assert!(decode_array::<3>("-_8").is_err());
    }
}
