//! The audit log's documentation matches its schema: the field table and the
//! event table under "## Audit log" in docs/manual.md against the types in
//! src/observe/audit/schema.rs. A field added to a type and not to the docs
//! (or the other way round), or an event left out of the docs, fails here.

use std::collections::{BTreeMap, BTreeSet};

use allowdns::observe::audit::schema::{Event, EventLine, QueryRecord};

/// The "## Audit log" section of the manual.
fn section() -> String {
    let manual = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/manual.md"))
        .expect("docs/manual.md");
    let start = manual
        .find("\n## Audit log\n")
        .expect("docs/manual.md has a '## Audit log' section");
    let rest = &manual[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

/// The rows of the table whose header is `header`, as (first cell, second cell).
fn table(section: &str, header: &str) -> Vec<(String, String)> {
    let start = section
        .find(header)
        .unwrap_or_else(|| panic!("no table '{header}' under '## Audit log'"));
    section[start..]
        .lines()
        .skip(2) // the header and the |---| line
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').splitn(2, '|').collect();
            (cells[0].trim().to_string(), cells[1].trim().to_string())
        })
        .collect()
}

/// The identifiers in backticks: `` `count` `` is a field, `` `a:b` `` is not.
fn ticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .map(str::to_string)
        .collect()
}

fn keys(value: &serde_json::Value) -> BTreeSet<String> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn the_query_record_table_matches_the_type() {
    let section = section();
    let rows = table(&section, "| field | content |");
    let documented: BTreeSet<String> = rows
        .iter()
        .map(|(field, _)| ticked(field).concat())
        .collect();
    // Every optional field is set, so every field the type can write is here.
    let record = serde_json::to_value(QueryRecord::example()).unwrap();
    assert_eq!(
        keys(&record),
        documented,
        "docs/manual.md '## Audit log' field table vs QueryRecord"
    );
    // And the answers row spells an answer's fields.
    let answers = &rows.iter().find(|(f, _)| f == "`answers`").unwrap().1;
    let inner = &answers[answers.find('{').unwrap() + 1..answers.find('}').unwrap()];
    let documented: BTreeSet<String> = inner.split(',').map(|f| f.trim().to_string()).collect();
    assert_eq!(
        keys(&record["answers"][0]),
        documented,
        "answers: {answers}"
    );
    // And the parents row spells a parent's fields.
    let parents = &rows.iter().find(|(f, _)| f == "`parents`").unwrap().1;
    let inner = &parents[parents.find('{').unwrap() + 1..parents.find('}').unwrap()];
    let documented: BTreeSet<String> = inner.split(',').map(|f| f.trim().to_string()).collect();
    assert_eq!(
        keys(&record["parents"][0]),
        documented,
        "parents: {parents}"
    );
}

#[test]
fn the_event_table_matches_the_types() {
    let section = section();
    let rows = table(&section, "| event | fields |");
    // Event name → documented fields; "as `grant`" takes grant's fields.
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (event, fields) in &rows {
        let event = ticked(event).concat();
        let mut names = ticked(fields);
        let mut set = BTreeSet::new();
        if fields.starts_with("as `") {
            let like = names.remove(0);
            set.extend(
                documented
                    .get(&like)
                    .cloned()
                    .unwrap_or_else(|| panic!("{event}: 'as `{like}`' before {like}'s row")),
            );
        }
        set.extend(names);
        assert!(
            documented.insert(event.clone(), set).is_none(),
            "{event} twice"
        );
    }

    // The variants serde knows: an unknown event's error lists them all.
    let err = serde_json::from_str::<EventLine>(r#"{"ts":"","event":"?"}"#).unwrap_err();
    let message = err.to_string();
    let known: BTreeSet<String> = ticked(
        message
            .split("expected one of")
            .nth(1)
            .unwrap_or_else(|| panic!("{message}")),
    )
    .into_iter()
    .collect();
    let names: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(names, known, "docs/manual.md event table vs the Event enum");

    let examples = Event::examples();
    let mut seen = BTreeSet::new();
    for event in examples {
        let line = serde_json::to_value(EventLine::now(event.clone())).unwrap();
        let name = line["event"].as_str().unwrap().to_string();
        let mut fields = keys(&line);
        assert!(fields.remove("ts") && fields.remove("event"), "{line}");
        assert_eq!(
            Some(&fields),
            documented.get(&name),
            "fields of '{name}': the type vs docs/manual.md"
        );
        // Lines read back as what was written.
        let back: EventLine = serde_json::from_value(line).unwrap();
        assert_eq!(back.event, event);
        seen.insert(name);
    }
    assert_eq!(seen, known, "Event::examples() has one of every event");
}
