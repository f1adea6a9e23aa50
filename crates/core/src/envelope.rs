//! The envelope: one message, with exactly the fields of the wire format (docs/architecture.md,
//! "Envelope and wire format"; field by field in docs/wire-format.md).

use crate::codec::Encoding;
use crate::kind::{EventKind, Priority};
use crate::topic::Topic;
use bytes::Bytes;
use std::sync::Arc;

/// The wire-format version this code writes and reads (`v`).
pub const WIRE_VERSION: u32 = 1;

/// Default limit on the payload size accepted from the wire: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// One message.
///
/// The wire field `v` is [`WIRE_VERSION`] and `id` is `{src}:{inst}:{seq}`; both are derived, so
/// they cannot disagree with the other fields (a wire entry whose `id` does disagree is rejected).
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// What the payload is; decides the route.
    pub kind: EventKind,
    /// What it is about; its first segment is the kind's name.
    pub topic: Topic,
    /// The publishing engine (`risk`).
    pub src: Arc<str>,
    /// The publishing instance, stable across restarts (`risk-1`).
    pub inst: Arc<str>,
    /// Strictly increasing per (`src`, `inst`).
    pub seq: u64,
    /// Publish time, Unix epoch nanoseconds.
    pub ts: u64,
    /// Priority; `Critical` takes the priority lane.
    pub prio: Priority,
    /// How `payload` is encoded.
    pub enc: Encoding,
    /// Correlation id (requests and replies only).
    pub corr: Option<Arc<str>>,
    /// Stream key for the reply (requests only).
    pub reply: Option<Arc<str>>,
    /// The encoded payload.
    pub payload: Bytes,
}

/// A payload that does not decode as the type asked for ([`Envelope::decode`]).
#[derive(Debug, thiserror::Error)]
#[error("{kind} does not decode: {source}")]
pub struct PayloadError {
    /// The envelope's kind.
    pub kind: EventKind,
    /// Why the payload does not decode.
    pub source: crate::CodecError,
}

/// A wire entry that is not a valid envelope; the reason goes to the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field holds a bad value.
    #[error("field `{field}` has bad value {value:?}: {reason}")]
    BadField {
        /// The field.
        field: &'static str,
        /// Its value (lossy UTF-8, truncated to 80 characters).
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The payload is over the configured limit.
    #[error("payload of {len} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

/// Builds envelopes; see [`Envelope::builder`].
#[derive(Clone, Debug)]
pub struct EnvelopeBuilder {
    env: Envelope,
}

impl EnvelopeBuilder {
    /// Sets the sequence number.
    pub fn seq(mut self, seq: u64) -> Self {
        self.env.seq = seq;
        self
    }
    /// Sets the timestamp (Unix ns).
    pub fn ts(mut self, ts: u64) -> Self {
        self.env.ts = ts;
        self
    }
    /// Sets the priority.
    pub fn prio(mut self, prio: Priority) -> Self {
        self.env.prio = prio;
        self
    }
    /// Sets the payload and its encoding.
    pub fn payload(mut self, enc: Encoding, payload: Bytes) -> Self {
        self.env.enc = enc;
        self.env.payload = payload;
        self
    }
    /// Sets the correlation id.
    pub fn corr(mut self, corr: impl Into<Arc<str>>) -> Self {
        self.env.corr = Some(corr.into());
        self
    }
    /// Sets the reply stream key.
    pub fn reply(mut self, reply: impl Into<Arc<str>>) -> Self {
        self.env.reply = Some(reply.into());
        self
    }
    /// The envelope.
    pub fn build(self) -> Envelope {
        self.env
    }
}

fn trunc(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    s.chars().take(80).collect()
}

fn utf8<'a>(field: &'static str, v: &'a [u8]) -> Result<&'a str, WireError> {
    std::str::from_utf8(v).map_err(|_| WireError::BadField {
        field,
        value: trunc(v),
        reason: "not UTF-8".into(),
    })
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Envelope {
    /// Decodes the payload as `T`, with the envelope's own encoding.
    ///
    /// # Errors
    /// [`PayloadError`] naming the kind and why the payload does not decode.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, PayloadError> {
        self.enc
            .decode(&self.payload)
            .map_err(|source| PayloadError {
                kind: self.kind.clone(),
                source,
            })
    }

    /// Starts an envelope with the required fields; the rest default (seq 0, ts now, normal
    /// priority, empty JSON payload).
    pub fn builder(
        kind: EventKind,
        topic: Topic,
        src: impl Into<Arc<str>>,
        inst: impl Into<Arc<str>>,
    ) -> EnvelopeBuilder {
        EnvelopeBuilder {
            env: Envelope {
                kind,
                topic,
                src: src.into(),
                inst: inst.into(),
                seq: 0,
                ts: crate::now_unix_nanos(),
                prio: Priority::Normal,
                enc: Encoding::Json,
                corr: None,
                reply: None,
                payload: Bytes::from_static(b"{}"),
            },
        }
    }

    /// The message id, `{src}:{inst}:{seq}`.
    pub fn id(&self) -> String {
        format!("{}:{}:{}", self.src, self.inst, self.seq)
    }

    /// Whether `src` and `inst` are valid names (`[A-Za-z0-9_-]`, 1 to 128 bytes), so that the
    /// id `{src}:{inst}:{seq}` parses back unambiguously.
    pub fn names_valid(src: &str, inst: &str) -> bool {
        name_ok(src) && name_ok(inst)
    }

    /// The wire fields in the order of the contract; `corr` and `reply` only when set.
    pub fn to_wire_fields(&self) -> Vec<(&'static str, Bytes)> {
        let mut f = Vec::with_capacity(13);
        let s = |v: String| Bytes::from(v.into_bytes());
        f.push(("v", Bytes::from_static(b"1")));
        f.push(("id", s(self.id())));
        f.push(("kind", s(self.kind.as_str().to_string())));
        f.push(("topic", s(self.topic.as_str().to_string())));
        f.push(("src", s(self.src.to_string())));
        f.push(("inst", s(self.inst.to_string())));
        f.push(("seq", s(self.seq.to_string())));
        f.push(("ts", s(self.ts.to_string())));
        f.push(("prio", Bytes::from_static(self.prio.as_str().as_bytes())));
        f.push(("enc", Bytes::from_static(self.enc.as_str().as_bytes())));
        if let Some(c) = &self.corr {
            f.push(("corr", s(c.to_string())));
        }
        if let Some(r) = &self.reply {
            f.push(("reply", s(r.to_string())));
        }
        f.push(("payload", self.payload.clone()));
        f
    }

    /// Parses wire fields (any order; unknown fields are ignored for forward compatibility).
    ///
    /// # Errors
    /// [`WireError`] naming the missing or bad field, or the oversized payload.
    pub fn from_wire_fields<'a, I>(fields: I, max_payload: usize) -> Result<Envelope, WireError>
    where
        I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
    {
        let mut slots: [Option<&[u8]>; 13] = [None; 13];
        const NAMES: [&str; 13] = [
            "v", "id", "kind", "topic", "src", "inst", "seq", "ts", "prio", "enc", "corr", "reply",
            "payload",
        ];
        for (k, v) in fields {
            if let Some(i) = NAMES.iter().position(|n| n.as_bytes() == k) {
                slots[i] = Some(v);
            }
        }
        let req = |i: usize| slots[i].ok_or(WireError::MissingField(NAMES[i]));
        let bad = |field: &'static str, v: &[u8], reason: String| WireError::BadField {
            field,
            value: trunc(v),
            reason,
        };

        let v = req(0)?;
        if v != b"1" {
            return Err(bad(
                "v",
                v,
                format!("unsupported version, expected {WIRE_VERSION}"),
            ));
        }
        let payload = req(12)?;
        if payload.len() > max_payload {
            return Err(WireError::PayloadTooLarge {
                len: payload.len(),
                limit: max_payload,
            });
        }
        let kind_raw = req(2)?;
        let kind = EventKind::parse(utf8("kind", kind_raw)?)
            .map_err(|e| bad("kind", kind_raw, e.reason.to_string()))?;
        let topic_raw = req(3)?;
        let topic = Topic::new(utf8("topic", topic_raw)?)
            .map_err(|e| bad("topic", topic_raw, e.to_string()))?;
        if !topic.starts_with_segment(kind.as_str()) {
            return Err(bad(
                "topic",
                topic_raw,
                format!("must start with its kind {:?}", kind.as_str()),
            ));
        }
        let src = utf8("src", req(4)?)?;
        if !name_ok(src) {
            return Err(bad(
                "src",
                src.as_bytes(),
                "must be 1-128 of [A-Za-z0-9_-]".into(),
            ));
        }
        let inst = utf8("inst", req(5)?)?;
        if !name_ok(inst) {
            return Err(bad(
                "inst",
                inst.as_bytes(),
                "must be 1-128 of [A-Za-z0-9_-]".into(),
            ));
        }
        let num = |i: usize, field: &'static str| -> Result<u64, WireError> {
            let raw = req(i)?;
            // Canonical decimal only: digits, no sign, no leading zeros.
            let canonical = !raw.is_empty()
                && raw.iter().all(u8::is_ascii_digit)
                && (raw.len() == 1 || raw[0] != b'0');
            let parsed = if canonical {
                utf8(field, raw)?.parse::<u64>().ok()
            } else {
                None
            };
            parsed.ok_or_else(|| bad(field, raw, "not a canonical decimal u64".into()))
        };
        let seq = num(6, "seq")?;
        let ts = num(7, "ts")?;
        let prio_raw = req(8)?;
        let prio = utf8("prio", prio_raw)?
            .parse::<Priority>()
            .map_err(|e| bad("prio", prio_raw, e))?;
        let enc_raw = req(9)?;
        let enc = utf8("enc", enc_raw)?
            .parse::<Encoding>()
            .map_err(|e| bad("enc", enc_raw, e.to_string()))?;
        enc.validate(payload)
            .map_err(|e| bad("payload", payload, e.to_string()))?;
        let id_raw = req(1)?;
        let id = utf8("id", id_raw)?;
        let expected = format!("{src}:{inst}:{seq}");
        if id != expected {
            return Err(bad(
                "id",
                id_raw,
                format!("expected {expected:?} ({{src}}:{{inst}}:{{seq}})"),
            ));
        }
        let opt = |i: usize, field: &'static str| -> Result<Option<Arc<str>>, WireError> {
            match slots[i] {
                None => Ok(None),
                Some([]) => Ok(None),
                Some(b) => Ok(Some(Arc::from(utf8(field, b)?))),
            }
        };
        Ok(Envelope {
            kind,
            topic,
            src: Arc::from(src),
            inst: Arc::from(inst),
            seq,
            ts,
            prio,
            enc,
            corr: opt(10, "corr")?,
            reply: opt(11, "reply")?,
            payload: Bytes::copy_from_slice(payload),
        })
    }

    /// Every wire field plus the decoded payload as one JSON object (for `tail --json` and logs).
    /// A payload that does not decode is shown as `{"undecodable": reason}`.
    pub fn to_json(&self) -> serde_json::Value {
        let payload = self
            .enc
            .to_json_value(&self.payload)
            .unwrap_or_else(|e| serde_json::json!({ "undecodable": e.to_string() }));
        serde_json::json!({
            "v": WIRE_VERSION,
            "id": self.id(),
            "kind": self.kind.as_str(),
            "topic": self.topic.as_str(),
            "src": &*self.src,
            "inst": &*self.inst,
            "seq": self.seq,
            "ts": self.ts,
            "prio": self.prio.as_str(),
            "enc": self.enc.as_str(),
            "corr": self.corr.as_deref(),
            "reply": self.reply.as_deref(),
            "payload": payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope::builder(
            EventKind::RiskAlert,
            Topic::new("risk_alert.BTCUSDT").unwrap(),
            "risk",
            "risk-1",
        )
        .seq(42)
        .ts(1_700_000_000_000_000_000)
        .prio(Priority::Critical)
        .payload(
            Encoding::Json,
            Bytes::from_static(br#"{"rule":"max_position"}"#),
        )
        .corr("c-1")
        .build()
    }

    fn fields(e: &Envelope) -> Vec<(Vec<u8>, Vec<u8>)> {
        e.to_wire_fields()
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    fn parse(f: &[(Vec<u8>, Vec<u8>)]) -> Result<Envelope, WireError> {
        Envelope::from_wire_fields(f.iter().map(|(k, v)| (&k[..], &v[..])), DEFAULT_MAX_PAYLOAD)
    }

    #[test]
    fn wire_round_trip() {
        let e = sample();
        assert_eq!(e.id(), "risk:risk-1:42");
        assert_eq!(parse(&fields(&e)).unwrap(), e);
    }

    #[test]
    fn missing_and_bad_fields_are_named() {
        let e = sample();
        let mut f = fields(&e);
        f.retain(|(k, _)| k != b"seq");
        assert_eq!(parse(&f).unwrap_err(), WireError::MissingField("seq"));

        let mut f = fields(&e);
        for (k, v) in f.iter_mut() {
            if k == b"enc" {
                *v = b"protobuf".to_vec();
            }
        }
        let err = parse(&f).unwrap_err().to_string();
        assert!(err.contains("`enc`") && err.contains("protobuf"), "{err}");

        let mut f = fields(&e);
        for (k, v) in f.iter_mut() {
            if k == b"id" {
                *v = b"risk:risk-1:7".to_vec();
            }
        }
        assert!(parse(&f).unwrap_err().to_string().contains("`id`"));
    }

    #[test]
    fn oversized_payload_is_rejected() {
        let e = sample();
        let f = fields(&e);
        let err =
            Envelope::from_wire_fields(f.iter().map(|(k, v)| (&k[..], &v[..])), 4).unwrap_err();
        assert!(matches!(err, WireError::PayloadTooLarge { limit: 4, .. }));
    }

    #[test]
    fn json_view_has_every_field() {
        let j = sample().to_json();
        for k in [
            "v", "id", "kind", "topic", "src", "inst", "seq", "ts", "prio", "enc", "corr", "reply",
            "payload",
        ] {
            assert!(j.get(k).is_some(), "{k}");
        }
        assert_eq!(j["payload"]["rule"], "max_position");
    }
}
