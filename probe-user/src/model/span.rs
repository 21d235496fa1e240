//! The span a record is exported as: its IDs are chosen once, before the sinks, so that the
//! OTLP span, its log record and a metric's exemplar name the same span.

/// What the record's own span is: not chosen (0: records made in tests, or by a stage after
/// the sinks; the OTLP output draws its own), over the node's OTLP budget (1: counted in the
/// OTLP output's next summary instead of being a span and a log record of its own), or the
/// span ID it is exported with. One word: every record carries it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnSpan(u64);

impl OwnSpan {
    pub const UNASSIGNED: Self = Self(0);
    pub const OVER_BUDGET: Self = Self(1);

    /// A span ID drawn at random: None for the two reserved values (draw again).
    pub fn from_random(id: u64) -> Option<Self> {
        (id > 1).then_some(Self(id))
    }

    /// The span ID as OTLP bytes, when one was chosen.
    pub fn id(self) -> Option<[u8; 8]> {
        (self.0 > 1).then(|| self.0.to_be_bytes())
    }

    pub fn is_over_budget(self) -> bool {
        self == Self::OVER_BUDGET
    }
}

/// Another record's span: a summary's link to a full record it stands beside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanRef {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

impl serde::Serialize for SpanRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut m = s.serialize_struct("SpanRef", 2)?;
        m.serialize_field("trace_id", &hex(&self.trace_id))?;
        m.serialize_field("span_id", &hex(&self.span_id))?;
        m.end()
    }
}

/// The trace of a record that belongs to no request: a function of its span ID (so every
/// output names the same trace), spread over all 128 bits (splitmix64 of the ID, twice).
pub fn own_trace_id(span_id: [u8; 8]) -> [u8; 16] {
    let seed = u64::from_be_bytes(span_id);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&splitmix64(seed).to_be_bytes());
    out[8..].copy_from_slice(&splitmix64(seed ^ 0x9e37_79b9_7f4a_7c15).to_be_bytes());
    out
}

/// IDs as W3C and Grafana write them: lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    hex_into(&mut out, bytes);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// `hex`, appended to a buffer (the JSON line's writer).
pub fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.extend_from_slice(&HEX[usize::from(*b)]);
    }
}

/// Each byte's two lowercase hex digits.
const HEX: [[u8; 2]; 256] = {
    let digits = *b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [digits[i >> 4], digits[i & 15]];
        i += 1;
    }
    t
};

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl super::Record {
    /// The (trace ID, span ID) of the record's own span, when chosen: inside the request's
    /// trace when the record carries one, a trace of its own otherwise.
    pub fn span_ids(&self) -> Option<([u8; 16], [u8; 8])> {
        let span_id = self.span.id()?;
        let trace_id = match &self.trace {
            Some(t) => t.parent.trace_id,
            None => own_trace_id(span_id),
        };
        Some((trace_id, span_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_records_own_trace_is_a_function_of_its_span_and_never_zero() {
        let a = own_trace_id(1u64.to_be_bytes());
        assert_eq!(a, own_trace_id(1u64.to_be_bytes()));
        assert_ne!(a, own_trace_id(2u64.to_be_bytes()));
        assert_ne!(a, [0; 16]);
        assert_ne!(a[..8], a[8..]);
    }

    #[test]
    fn only_a_chosen_id_is_an_id() {
        let id = OwnSpan::from_random(0x0102_0304_0506_0708).unwrap();
        assert_eq!(OwnSpan::from_random(1), None);
        assert_eq!(OwnSpan::from_random(0), None);
        assert_eq!(id.id(), Some([1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(OwnSpan::UNASSIGNED.id(), None);
        assert_eq!(OwnSpan::OVER_BUDGET.id(), None);
    }
}
