//! What a label can carry: the label-bits estimate the budget charges, and
//! the run-bits measure behind the tunnel-shape signal.

/// The most a label can carry: its length times the bits per character of
/// the smallest common alphabet holding it. An upper bound on purpose (a
/// short random label's empirical entropy understates it); words repeat,
/// and repeated labels are charged `SEEN_LABEL_BITS`.
pub fn label_bits(label: &[u8]) -> f32 {
    // Its alphabet, and the hyphen.
    let alphabet = alphabet(label).map_or(256.0, |n| n + 1.0);
    label.len() as f32 * f32::log2(alphabet)
}

/// The most any hyphen-separated run of a label can carry, each run judged
/// by its own smallest alphabet (digits, hex, letters of one case, letters
/// and digits, ...): the tunnel-shape signal. Unlike [`label_bits`] this is
/// not an upper bound on what the label carries but a measure of its
/// longest random-looking stretch: `pub-` + 32 hex is 128 bits, 40 hex 160.
pub fn run_bits(label: &[u8]) -> f32 {
    label
        .split(|&b| b == b'-')
        .map(|run| run.len() as f32 * alphabet(run).unwrap_or(256.0).log2())
        .fold(0.0, f32::max)
}

/// The size of the smallest common alphabet holding `bytes`, hyphens aside:
/// digits (10), hex (16), letters of one or both cases, with digits or
/// not; `None` when a byte is outside all of them.
fn alphabet(bytes: &[u8]) -> Option<f32> {
    let (mut lower, mut upper, mut digit, mut hex) = (false, false, false, true);
    for &b in bytes {
        match b {
            b'a'..=b'f' => lower = true,
            b'g'..=b'z' => {
                lower = true;
                hex = false;
            }
            b'A'..=b'Z' => {
                upper = true;
                hex = false;
            }
            b'0'..=b'9' => digit = true,
            b'-' => {}
            _ => return None,
        }
    }
    Some(if hex && !upper {
        if lower { 16.0 } else { 10.0 }
    } else {
        26.0 * (f32::from(u8::from(lower)) + f32::from(u8::from(upper)))
            + if digit { 10.0 } else { 0.0 }
    })
}
