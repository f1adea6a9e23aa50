//! The properties the fuzz targets (`fuzz/`) and the property tests check on the wire
//! decoders. Not a stable API: for fuzzing and tests only.

use crate::{Encoding, Envelope};

/// Splits fuzz input into wire fields: NUL-separated, alternating name and value (so a
/// field's value may hold any other byte, as a payload does).
pub fn fields_of(data: &[u8]) -> Vec<(&[u8], &[u8])> {
    let parts: Vec<&[u8]> = data.split(|b| *b == 0).collect();
    parts.chunks_exact(2).map(|p| (p[0], p[1])).collect()
}

/// The inverse of [`fields_of`]: how the corpus's seeds are written.
pub fn bytes_of(fields: &[(&str, bytes::Bytes)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
    }
    out
}

/// On any field list: the envelope decoder never panics, and an envelope it accepts is
/// written and read back unchanged.
pub fn wire_envelope(data: &[u8]) {
    let fields = fields_of(data);
    if let Ok(env) = Envelope::from_wire_fields(fields.iter().copied(), 1 << 20) {
        let wire = env.to_wire_fields();
        let again =
            Envelope::from_wire_fields(wire.iter().map(|(k, v)| (k.as_bytes(), &v[..])), 1 << 20)
                .expect("an envelope's own wire fields decode");
        assert_eq!(again, env);
    }
}

/// On any bytes: the JSON and MessagePack payload decoders never panic, and a value they
/// read is encoded and read back unchanged.
pub fn payload(data: &[u8]) {
    for enc in [Encoding::Json, Encoding::Msgpack] {
        if let Ok(v) = enc.decode::<serde_json::Value>(data) {
            let bytes = enc.encode(&v).expect("a decoded value encodes");
            let again: serde_json::Value = enc.decode(&bytes).expect("and decodes");
            assert_eq!(again, v, "{enc:?}");
        }
    }
}
