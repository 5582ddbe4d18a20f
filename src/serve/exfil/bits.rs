//! What a label can carry: the label-bits estimate the budget charges, and
//! the run-bits measure behind the tunnel-shape signal.

/// The most a label can carry: its length times the bits per character of
/// the smallest common alphabet holding it. An upper bound on purpose (a
/// short random label's empirical entropy understates it); words repeat,
/// and repeated labels are charged `SEEN_LABEL_BITS`.
pub fn label_bits(label: &[u8]) -> f32 {
    let (mut lower, mut upper, mut digit, mut other, mut hex_only) =
        (false, false, false, false, true);
    for &b in label {
        match b {
            b'a'..=b'f' => lower = true,
            b'g'..=b'z' => {
                lower = true;
                hex_only = false;
            }
            b'A'..=b'Z' => {
                upper = true;
                hex_only = false;
            }
            b'0'..=b'9' => digit = true,
            b'-' => {}
            _ => other = true,
        }
    }
    let alphabet: f32 = if other {
        256.0
    } else if hex_only && !upper {
        if lower { 17.0 } else { 11.0 }
    } else {
        let mut n = 1.0; // '-'
        if lower {
            n += 26.0;
        }
        if upper {
            n += 26.0;
        }
        if digit {
            n += 10.0;
        }
        n
    };
    label.len() as f32 * alphabet.log2()
}

/// The most any hyphen-separated run of a label can carry, each run judged
/// by its own smallest alphabet (digits, hex, letters of one case, letters
/// and digits, ...): the tunnel-shape signal. Unlike [`label_bits`] this is
/// not an upper bound on what the label carries but a measure of its
/// longest random-looking stretch: `pub-` + 32 hex is 128 bits, 40 hex 160.
pub fn run_bits(label: &[u8]) -> f32 {
    label
        .split(|&b| b == b'-')
        .map(|run| {
            let (mut lower, mut upper, mut digit, mut other, mut hex) =
                (false, false, false, false, true);
            for &b in run {
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
                    _ => other = true,
                }
            }
            let alphabet: f32 = if other {
                256.0
            } else if hex && !upper {
                if lower { 16.0 } else { 10.0 }
            } else {
                26.0 * (f32::from(u8::from(lower)) + f32::from(u8::from(upper)))
                    + if digit { 10.0 } else { 0.0 }
            };
            run.len() as f32 * alphabet.log2()
        })
        .fold(0.0, f32::max)
}
