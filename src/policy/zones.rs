//! Local zones: RFC 1035 master files from `zones/`, answered from memory.
//!
//! Local answers are still subject to policy; the handler only gets here for
//! allowed names. Each file is one zone; its origin is `$ORIGIN` or else the
//! file name without `.zone`.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::Parser;

use crate::diagnostics::Diagnostics;
use crate::policy::name::QueryKey;

/// All local zones, keyed by canonical origin.
#[derive(Debug, Default)]
pub struct Zones {
    zones: HashMap<String, Zone>,
}

/// One zone's records.
#[derive(Debug)]
pub struct Zone {
    /// The apex SOA, returned in the authority section of negative answers.
    soa: Record,
    /// Records by owner key, then type: looked up with the question's key
    /// as it is, no copy per lookup.
    records: HashMap<String, HashMap<RecordType, Vec<Record>>>,
    /// Every owner and empty non-terminal, to tell NODATA from NXDOMAIN.
    names: HashSet<String>,
    /// The canonical origin, to stop the wildcard walk at the apex.
    origin: String,
}

/// Owners are keyed as questions are ([`QueryKey::of_any`]), so a lookup
/// takes the question's key as it is.
fn key(name: &Name) -> String {
    QueryKey::of_any(name).into()
}

fn parent(key: &str) -> Option<&str> {
    if key.is_empty() {
        None
    } else {
        Some(key.find('.').map_or("", |i| &key[i + 1..]))
    }
}

impl Zones {
    /// Loads every `*.zone` file in `dir`; `None` loads nothing.
    pub fn load(dir: Option<&Path>, diags: &mut Diagnostics) -> Zones {
        let mut zones = Zones::default();
        let Some(dir) = dir else { return zones };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                diags.error(dir, None, None, format!("cannot read zones directory: {e}"));
                return zones;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "zone"))
            .collect();
        files.sort();
        for file in files {
            if let Some((origin, zone)) = load_zone(&file, diags) {
                match zones.zones.entry(origin) {
                    Entry::Occupied(e) => {
                        diags.error(
                            &file,
                            None,
                            None,
                            format!("zone '{}' is defined twice", e.key()),
                        );
                    }
                    Entry::Vacant(e) => {
                        e.insert(zone);
                    }
                }
            }
        }
        zones
    }

    pub fn len(&self) -> usize {
        self.zones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }

    /// The answer for `name` (whose key is `key`) if it lies in a local zone
    /// (the closest enclosing one).
    pub fn lookup(&self, key: &QueryKey, name: &Name, qtype: RecordType) -> Option<Step> {
        if self.zones.is_empty() {
            return None;
        }
        let qkey = key.as_str();
        let mut at = Some(qkey);
        while let Some(candidate) = at {
            if let Some(zone) = self.zones.get(candidate) {
                return Some(zone.lookup(qkey, name, qtype));
            }
            at = parent(candidate);
        }
        None
    }
}

impl Zone {
    fn lookup(&self, qkey: &str, name: &Name, qtype: RecordType) -> Step {
        if let Some(step) = self.lookup_at(qkey, qtype, None) {
            return step;
        }
        if self.names.contains(qkey) {
            return self.negative(ResponseCode::NoError);
        }
        // RFC 4592: a wildcard at the closest encloser answers for the name.
        let mut at = parent(qkey);
        while let Some(ancestor) = at {
            let wildcard = if ancestor.is_empty() {
                "*".to_string()
            } else {
                format!("*.{ancestor}")
            };
            if self.names.contains(&wildcard) {
                return self
                    .lookup_at(&wildcard, qtype, Some(name))
                    .unwrap_or_else(|| self.negative(ResponseCode::NoError));
            }
            if self.names.contains(ancestor) || ancestor == self.origin {
                break;
            }
            at = parent(ancestor);
        }
        self.negative(ResponseCode::NXDomain)
    }

    /// Records of `qtype` (or a CNAME) at `owner`, renamed to `rename` for wildcards.
    fn lookup_at(&self, owner: &str, qtype: RecordType, rename: Option<&Name>) -> Option<Step> {
        let at = self.records.get(owner)?;
        let found: Vec<Record> = if qtype == RecordType::ANY {
            at.values().flat_map(|rs| rs.iter().cloned()).collect()
        } else {
            at.get(&qtype)
                .or_else(|| at.get(&RecordType::CNAME))
                .cloned()
                .unwrap_or_default()
        };
        if found.is_empty() {
            return None;
        }
        let answers = found
            .into_iter()
            .map(|mut r| {
                if let Some(name) = rename {
                    r.name = name.clone();
                }
                r
            })
            .collect();
        Some(Step {
            rcode: ResponseCode::NoError,
            answers,
            authority: Vec::new(),
        })
    }

    fn negative(&self, rcode: ResponseCode) -> Step {
        let mut soa = self.soa.clone();
        if let RData::SOA(data) = &soa.data {
            soa.ttl = soa.ttl.min(data.minimum);
        }
        Step {
            rcode,
            answers: Vec::new(),
            authority: vec![soa],
        }
    }
}

/// The 1-based line where a zone file stops parsing, for parser errors that
/// do not say: the shortest prefix that fails with the same error. A prefix
/// ending before the bad line parses or fails differently (say, inside an
/// open parenthesis), so the search is monotonic.
fn failing_line(
    text: &str,
    message: &str,
    error: impl Fn(&str) -> Option<String>,
) -> Option<usize> {
    let ends: Vec<usize> = text
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .chain([text.len()])
        .collect();
    let fails = |n: usize| error(&text[..ends[n - 1]]).is_some_and(|m| m == message);
    let (mut lo, mut hi) = (1, ends.len());
    if !fails(hi) {
        return None;
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fails(mid) { hi = mid } else { lo = mid + 1 }
    }
    Some(lo)
}

fn load_zone(file: &Path, diags: &mut Diagnostics) -> Option<(String, Zone)> {
    let text = match crate::input::read_text(file) {
        Ok(text) => text,
        Err(e) => {
            diags.error(file, None, None, format!("cannot read zone file: {e}"));
            return None;
        }
    };
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let origin = match Name::from_ascii(format!("{stem}.")) {
        Ok(origin) => origin,
        Err(e) => {
            diags.error(
                file,
                None,
                None,
                format!("file name '{stem}' is not a zone name: {e}"),
            );
            return None;
        }
    };
    let parse =
        |text: &str| Parser::new(text, Some(file.to_path_buf()), Some(origin.clone())).parse();
    let (origin, rrsets) = match parse(&text) {
        Ok(parsed) => parsed,
        Err(e) => {
            let message = e.to_string();
            let line = message
                .split("line ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .or_else(|| {
                    failing_line(&text, &message, |t| parse(t).err().map(|e| e.to_string()))
                });
            diags.error(
                file,
                line,
                None,
                format!("zone file does not parse: {message}"),
            );
            return None;
        }
    };
    let origin_key = key(&origin);
    let mut records: HashMap<String, HashMap<RecordType, Vec<Record>>> = HashMap::new();
    let mut names = HashSet::new();
    let mut soa = None;
    for rrset in rrsets.into_values() {
        for record in rrset.records_without_rrsigs() {
            let owner = key(&record.name);
            if !origin.zone_of(&record.name) {
                diags.error(
                    file,
                    None,
                    None,
                    format!("record '{}' is outside the zone '{origin}'", record.name),
                );
                continue;
            }
            if record.record_type() == RecordType::SOA && owner == origin_key {
                soa = Some(record.clone());
            }
            let mut at = Some(owner.as_str());
            while let Some(name) = at {
                names.insert(name.to_string());
                if name == origin_key {
                    break;
                }
                at = parent(name);
            }
            records
                .entry(owner.clone())
                .or_default()
                .entry(record.record_type())
                .or_default()
                .push(record.clone());
        }
    }
    let Some(soa) = soa else {
        diags.error(
            file,
            None,
            None,
            format!("zone '{origin}' has no SOA record at its apex"),
        );
        return None;
    };
    Some((
        origin_key.clone(),
        Zone {
            soa,
            records,
            names,
            origin: origin_key,
        },
    ))
}

/// One answer to one question: what a single upstream exchange (or local
/// zone lookup) produced, before CNAME chasing.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// SOA (and any other authority records) for negative answers.
    pub authority: Vec<Record>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parse_error_names_its_line_even_after_a_multi_line_soa() {
        let dir = std::env::temp_dir().join(format!("allowdns-zone-line-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("l.test.zone");
        std::fs::write(
            &file,
            "$TTL 60\n@ IN SOA ns. h. (\n  1 3600\n  600 86400 5 )\na IN A 192.0.2.1\n\nb IN A 300.1.1.1\nc IN A 192.0.2.3\n",
        )
        .unwrap();
        let mut diags = Diagnostics::default();
        assert!(load_zone(&file, &mut diags).is_none());
        let error = diags.errors().next().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(error.line, Some(7), "{error}");
    }
}
