//! The plugin's edits of `spec.memberOverrides`, as pure functions of the list the API server
//! holds: find the member's entry, change one field, and leave every other entry exactly as it
//! was (unknown fields included, so an older plugin never strips what a newer CRD added).

use serde_json::{Map, Value};

use crate::api::MemberState;
use crate::api::MemberStatus;

/// The member an edit is about: a pod (members from a Service) or an address (any member).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Pod(String),
    /// `HOST:PORT`, or the member's whole URL.
    Address(String),
}

impl Target {
    /// A pod name never contains `:`; an address always does.
    pub fn parse(text: &str) -> Target {
        if text.contains(':') {
            Target::Address(text.to_owned())
        } else {
            Target::Pod(text.to_owned())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Target::Pod(s) | Target::Address(s) => s,
        }
    }

    /// The override entry of this member (the key `discovery` matches it by).
    fn key(&self) -> (&'static str, &str) {
        match self {
            Target::Pod(p) => ("pod", p),
            Target::Address(a) => ("address", a),
        }
    }

    fn owns(&self, entry: &Value) -> bool {
        let (field, value) = self.key();
        entry.get(field).and_then(Value::as_str) == Some(value)
    }

    /// This member's row in `.status.members`, if listed.
    pub fn row<'a>(&self, rows: &'a [MemberStatus]) -> Option<&'a MemberStatus> {
        rows.iter().find(|r| match self {
            Target::Pod(p) => r.pod.as_deref() == Some(p.as_str()),
            Target::Address(a) => {
                r.url == *a || crate::discovery::authority_of(&r.url).as_deref() == Some(a.as_str())
            }
        })
    }
}

/// What to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Drain, Disabled, Stopped (and the hot states, which the commands do not offer).
    State(MemberState),
    /// Back to Enabled: the plugin's state override goes away (and the entry with it when it
    /// holds nothing else), so the member's own state applies again.
    Enable,
    LoadFactor(u32),
}

/// The outcome of an edit: the new list and what a person is told.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub overrides: Vec<Value>,
    /// `Enabled -> Drain`, `loadFactor 1 -> 3`.
    pub summary: String,
    pub changed: bool,
}

/// Applies `edit` to the member `target` in `overrides`. `row` is the member's line in status
/// (what it has now), used only to say what it was before when no override says so.
pub fn apply(
    overrides: &[Value],
    target: &Target,
    edit: Edit,
    row: Option<&MemberStatus>,
) -> Change {
    // `discovery` applies every matching entry in order, the last one winning: fold them into
    // one, at the place of the first, so that the edit is not masked by a later duplicate.
    let mut merged: Option<Map<String, Value>> = None;
    let mut position = None;
    let mut others = Vec::with_capacity(overrides.len() + 1);
    for entry in overrides {
        if target.owns(entry) {
            position.get_or_insert(others.len());
            let fields = merged.get_or_insert_with(Map::new);
            if let Value::Object(map) = entry {
                fields.extend(map.clone());
            }
        } else {
            others.push(entry.clone());
        }
    }
    let mut entry = merged.unwrap_or_else(|| {
        let (field, value) = target.key();
        let mut map = Map::new();
        map.insert(field.to_owned(), Value::String(value.to_owned()));
        map
    });

    let summary = match edit {
        Edit::State(_) | Edit::Enable => {
            let before = entry
                .get("state")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| row.and_then(|r| administrative_state(&r.state)))
                .unwrap_or_else(|| "Enabled".to_owned());
            let after = match edit {
                Edit::State(state) => {
                    let name = state_name(state);
                    entry.insert("state".into(), Value::String(name.clone()));
                    name
                }
                _ => {
                    entry.remove("state");
                    "Enabled".to_owned()
                }
            };
            format!("{before} -> {after}")
        }
        Edit::LoadFactor(factor) => {
            let before = entry
                .get("loadFactor")
                .and_then(Value::as_u64)
                .or_else(|| row.map(|r| u64::from(r.load_factor)))
                .unwrap_or(1);
            entry.insert("loadFactor".into(), Value::from(factor));
            format!("loadFactor {before} -> {factor}")
        }
    };

    // Only the key left: the entry says nothing, so it goes.
    let keeps_something = entry.keys().any(|k| k != "pod" && k != "address");
    if keeps_something {
        let at = position.unwrap_or(others.len());
        others.insert(at, Value::Object(entry));
    }
    let changed = others.as_slice() != overrides;
    Change {
        overrides: others,
        summary,
        changed,
    }
}

/// The administrative state behind a status word, when the word is one (`Ok` and `Error` are
/// states of an enabled member).
fn administrative_state(status: &str) -> Option<String> {
    match status {
        "Disabled" | "Stopped" | "Drain" | "HotStandby" | "HotSpare" => Some(status.to_owned()),
        _ => None,
    }
}

/// The state as the resource spells it (its serde name, so a new state needs no change here).
fn state_name(state: MemberState) -> String {
    match serde_json::to_value(state) {
        Ok(Value::String(name)) => name,
        _ => format!("{state:?}"),
    }
}

/// Parses a load factor as the commands take it: a whole number from 1 to 100.
pub fn parse_load_factor(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n @ 1..=100) => Ok(n),
        _ => Err(format!(
            "the load factor must be a whole number from 1 to 100 (Apache's loadfactor), not {text:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(pod: &str, state: &str, factor: u32) -> MemberStatus {
        serde_json::from_value(json!({
            "url": "http://10.244.0.7:8080", "pod": pod, "loadFactor": factor, "lbset": 0,
            "state": state, "elected": 0, "busy": 0, "sentBytes": 0, "receivedBytes": 0,
        }))
        .expect("a row")
    }

    #[test]
    fn drain_adds_an_entry_and_keeps_the_others_as_they_are() {
        let before = vec![
            json!({"address": "10.0.0.5:80", "loadFactor": 5, "futureField": true}),
            json!({"pod": "web-b", "state": "Disabled"}),
        ];
        let change = apply(
            &before,
            &Target::parse("web-a"),
            Edit::State(MemberState::Drain),
            Some(&row("web-a", "Ok", 1)),
        );
        assert_eq!(change.summary, "Enabled -> Drain");
        assert!(change.changed);
        assert_eq!(
            change.overrides,
            vec![
                before[0].clone(),
                before[1].clone(),
                json!({"pod": "web-a", "state": "Drain"})
            ]
        );
    }

    #[test]
    fn enable_removes_an_entry_that_holds_nothing_else() {
        let before = vec![
            json!({"pod": "web-a", "state": "Drain"}),
            json!({"pod": "web-b", "state": "Stopped", "loadFactor": 3}),
        ];
        let change = apply(&before, &Target::parse("web-a"), Edit::Enable, None);
        assert_eq!(change.summary, "Drain -> Enabled");
        assert_eq!(change.overrides, vec![before[1].clone()]);

        let change = apply(&before, &Target::parse("web-b"), Edit::Enable, None);
        assert_eq!(change.summary, "Stopped -> Enabled");
        assert_eq!(
            change.overrides,
            vec![before[0].clone(), json!({"pod": "web-b", "loadFactor": 3})]
        );
    }

    #[test]
    fn enabling_an_enabled_member_changes_nothing() {
        let change = apply(
            &[],
            &Target::parse("web-a"),
            Edit::Enable,
            Some(&row("web-a", "Ok", 1)),
        );
        assert_eq!(
            (change.summary.as_str(), change.changed),
            ("Enabled -> Enabled", false)
        );
        assert!(change.overrides.is_empty());
    }

    #[test]
    fn the_state_before_comes_from_status_when_no_override_sets_it() {
        // A pod annotated kubebalancer.io/state=Drain shows Drain in status.
        let change = apply(
            &[],
            &Target::parse("web-a"),
            Edit::State(MemberState::Disabled),
            Some(&row("web-a", "Drain", 1)),
        );
        assert_eq!(change.summary, "Drain -> Disabled");
        let change = apply(
            &[],
            &Target::parse("web-a"),
            Edit::State(MemberState::Disabled),
            Some(&row("web-a", "Error", 1)),
        );
        assert_eq!(change.summary, "Enabled -> Disabled");
    }

    #[test]
    fn set_factor_keeps_the_state_and_reports_the_factor_it_replaces() {
        let before = vec![json!({"pod": "web-a", "state": "Drain"})];
        let change = apply(
            &before,
            &Target::parse("web-a"),
            Edit::LoadFactor(3),
            Some(&row("web-a", "Drain", 2)),
        );
        assert_eq!(change.summary, "loadFactor 2 -> 3");
        assert_eq!(
            change.overrides,
            vec![json!({"pod": "web-a", "state": "Drain", "loadFactor": 3})]
        );
    }

    #[test]
    fn duplicate_entries_fold_into_one_at_the_first_place() {
        let before = vec![
            json!({"pod": "web-a", "loadFactor": 2}),
            json!({"pod": "web-b", "state": "Drain"}),
            json!({"pod": "web-a", "state": "Disabled"}),
        ];
        let change = apply(&before, &Target::parse("web-a"), Edit::Enable, None);
        assert_eq!(change.summary, "Disabled -> Enabled");
        assert_eq!(
            change.overrides,
            vec![json!({"pod": "web-a", "loadFactor": 2}), before[1].clone()]
        );
    }

    #[test]
    fn an_address_targets_an_address_override_and_its_status_row() {
        let target = Target::parse("10.244.0.7:8080");
        assert_eq!(target, Target::Address("10.244.0.7:8080".into()));
        let change = apply(
            &[],
            &target,
            Edit::State(MemberState::Stopped),
            target.row(&[row("web-a", "Disabled", 1)]),
        );
        assert_eq!(change.summary, "Disabled -> Stopped");
        assert_eq!(
            change.overrides,
            vec![json!({"address": "10.244.0.7:8080", "state": "Stopped"})]
        );
    }

    #[test]
    fn load_factors_outside_1_to_100_are_refused_with_a_reason() {
        assert_eq!(parse_load_factor("3"), Ok(3));
        assert_eq!(parse_load_factor("100"), Ok(100));
        for bad in ["0", "101", "-1", "1.5", "x", ""] {
            let error = parse_load_factor(bad).expect_err(bad);
            assert!(error.contains("from 1 to 100"), "{error}");
        }
    }
}
