//! Payload encodings. Every envelope says how its payload is encoded (`enc`); a receiver decodes
//! with that, never with its own configuration.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// A payload encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// UTF-8 JSON.
    #[default]
    Json,
    /// MessagePack with named fields (maps, not arrays), readable from any language.
    Msgpack,
}

/// A payload that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Encoding failed.
    #[error("cannot encode payload as {enc}: {reason}")]
    Encode {
        /// The encoding.
        enc: Encoding,
        /// The serializer's message.
        reason: String,
    },
    /// Decoding failed.
    #[error("cannot decode {enc} payload: {reason}")]
    Decode {
        /// The encoding.
        enc: Encoding,
        /// The deserializer's message.
        reason: String,
    },
    /// The `enc` field named no known encoding.
    #[error("unknown encoding {0:?}: expected json or msgpack")]
    UnknownEncoding(String),
}

impl Encoding {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
        }
    }

    /// Encodes a value.
    ///
    /// # Errors
    /// [`CodecError::Encode`] when the value cannot be represented.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes, CodecError> {
        let res = match self {
            Encoding::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
            Encoding::Msgpack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
        };
        res.map(Bytes::from)
            .map_err(|reason| CodecError::Encode { enc: self, reason })
    }

    /// Encodes a value into `buf` and returns it as its own [`Bytes`], sharing `buf`'s
    /// allocation: a publisher encoding a batch this way makes one allocation per batch, not
    /// one per message. `buf` is a scratch buffer used only by this method (it is left empty).
    ///
    /// # Errors
    /// [`CodecError::Encode`] when the value cannot be represented (nothing is returned; `buf`
    /// keeps no partial output).
    pub fn encode_into<T: Serialize + ?Sized>(
        self,
        value: &T,
        buf: &mut bytes::BytesMut,
    ) -> Result<Bytes, CodecError> {
        use bytes::BufMut;
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(64 * 1024);
        }
        let start = buf.len();
        let res = match self {
            Encoding::Json => serde_json::to_writer(buf.writer(), value).map_err(|e| e.to_string()),
            Encoding::Msgpack => {
                rmp_serde::encode::write_named(&mut buf.writer(), value).map_err(|e| e.to_string())
            }
        };
        match res {
            Ok(()) => Ok(buf.split().freeze()),
            Err(reason) => {
                buf.truncate(start);
                Err(CodecError::Encode { enc: self, reason })
            }
        }
    }

    /// Decodes a value.
    ///
    /// # Errors
    /// [`CodecError::Decode`] when the bytes are not a valid `T` in this encoding.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        let res = match self {
            Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Encoding::Msgpack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        };
        res.map_err(|reason| CodecError::Decode { enc: self, reason })
    }

    /// Checks that the bytes are one well-formed value in this encoding, without building it.
    ///
    /// # Errors
    /// [`CodecError::Decode`] with the parser's reason.
    pub fn validate(self, bytes: &[u8]) -> Result<(), CodecError> {
        self.decode::<serde::de::IgnoredAny>(bytes).map(|_| ())
    }

    /// Decodes any payload into a JSON value, whatever its encoding (for tools and logs).
    ///
    /// # Errors
    /// [`CodecError::Decode`] when the bytes are not valid in this encoding.
    pub fn to_json_value(self, bytes: &[u8]) -> Result<serde_json::Value, CodecError> {
        self.decode(bytes)
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Encoding {
    type Err = CodecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Encoding::Json),
            "msgpack" => Ok(Encoding::Msgpack),
            other => Err(CodecError::UnknownEncoding(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Alert {
        symbol: String,
        level: f64,
    }

    #[test]
    fn encode_into_shares_one_buffer_and_round_trips() {
        let mut buf = bytes::BytesMut::new();
        for enc in [Encoding::Json, Encoding::Msgpack] {
            let a = enc
                .encode_into(&serde_json::json!({"p": 1.5}), &mut buf)
                .unwrap();
            let b = enc
                .encode_into(&serde_json::json!({"p": 2.5}), &mut buf)
                .unwrap();
            assert!(buf.is_empty());
            assert_eq!(a, enc.encode(&serde_json::json!({"p": 1.5})).unwrap());
            let v: serde_json::Value = enc.decode(&b).unwrap();
            assert_eq!(v["p"], 2.5);
        }
    }

    #[test]
    fn both_encodings_round_trip() {
        let a = Alert {
            symbol: "BTCUSDT".into(),
            level: 0.93,
        };
        for enc in [Encoding::Json, Encoding::Msgpack] {
            let bytes = enc.encode(&a).unwrap();
            assert_eq!(enc.decode::<Alert>(&bytes).unwrap(), a);
            let v = enc.to_json_value(&bytes).unwrap();
            assert_eq!(v["symbol"], "BTCUSDT");
        }
    }

    #[test]
    fn msgpack_uses_named_fields() {
        let bytes = Encoding::Msgpack
            .encode(&Alert {
                symbol: "X".into(),
                level: 1.0,
            })
            .unwrap();
        // A map (0x8N), not an array (0x9N), so other languages see field names.
        assert_eq!(bytes[0] & 0xf0, 0x80);
    }

    #[test]
    fn validate_rejects_garbage() {
        assert!(Encoding::Json.validate(br#"{"a":1}"#).is_ok());
        assert!(Encoding::Json.validate(b"{\"a\":").is_err());
        assert!(Encoding::Msgpack.validate(&[0xc1]).is_err());
        let ok = Encoding::Msgpack
            .encode(&serde_json::json!({"a": 1}))
            .unwrap();
        assert!(Encoding::Msgpack.validate(&ok).is_ok());
    }

    #[test]
    fn unknown_encoding_is_named() {
        let e = "protobuf".parse::<Encoding>().unwrap_err();
        assert!(e.to_string().contains("\"protobuf\""));
    }
}
