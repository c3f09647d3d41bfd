//! Changes to the configuration's TOML, as the APIs make them: each sets the value at a key
//! path (replacing what was there) or removes it. Laid over the file's table in order, they
//! give the configuration that runs; decoded and validated as the file is, so a change is
//! refused with the same key-path errors as `portico validate`.

use serde::{Deserialize, Serialize};

/// One change: the value at `path` set, or removed (`value` absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edit {
    /// The key path, from the top of the file: `["functions", "orders", "memory_size_mb"]`.
    pub path: Vec<String>,
    /// The new value; `None` removes the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<toml::Value>,
}

impl Edit {
    /// Sets `path` to `value`.
    pub fn set(path: &[&str], value: impl Into<toml::Value>) -> Self {
        Self {
            path: path.iter().map(|p| (*p).to_owned()).collect(),
            value: Some(value.into()),
        }
    }

    /// Removes `path`.
    pub fn remove(path: &[&str]) -> Self {
        Self {
            path: path.iter().map(|p| (*p).to_owned()).collect(),
            value: None,
        }
    }

    /// Whether this change replaces all of `other`'s (its path is `other`'s or above it).
    fn covers(&self, other: &Edit) -> bool {
        other.path.starts_with(&self.path)
    }
}

/// The changes made so far, in order, without those a later one replaced whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overlay {
    /// The changes, oldest first.
    pub edits: Vec<Edit>,
}

impl Overlay {
    /// Adds `edit`, dropping the earlier changes it replaces (at its path or below).
    pub fn push(&mut self, edit: Edit) {
        self.edits.retain(|earlier| !edit.covers(earlier));
        self.edits.push(edit);
    }

    /// `self` with `edits` added.
    pub fn with(&self, edits: impl IntoIterator<Item = Edit>) -> Self {
        let mut next = self.clone();
        for edit in edits {
            next.push(edit);
        }
        next
    }

    /// Lays the changes over `table`, in order.
    pub fn apply(&self, table: &mut toml::Table) {
        for edit in &self.edits {
            apply(table, &edit.path, edit.value.as_ref());
        }
    }

    /// Every string value of the changes (the files they name, among others).
    pub fn strings(&self) -> Vec<&str> {
        fn walk<'a>(value: &'a toml::Value, out: &mut Vec<&'a str>) {
            match value {
                toml::Value::String(s) => out.push(s),
                toml::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
                toml::Value::Table(table) => table.values().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        for value in self.edits.iter().filter_map(|e| e.value.as_ref()) {
            walk(value, &mut out);
        }
        out
    }
}

/// Sets or removes the value at `path` in `table`, making the tables on the way (a value
/// that is not a table on the way is replaced by one).
fn apply(table: &mut toml::Table, path: &[String], value: Option<&toml::Value>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = table;
    for key in parents {
        if value.is_none() && !at.get(key).is_some_and(toml::Value::is_table) {
            // Nothing to remove below a key that is not there.
            return;
        }
        let entry = at
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let Some(next) = entry.as_table_mut() else {
            return;
        };
        at = next;
    }
    match value {
        Some(value) => {
            at.insert(last.clone(), value.clone());
        }
        None => {
            at.remove(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn changes_are_laid_over_the_file_in_order() {
        let mut file = table(
            "[functions.a]\nmemory_size_mb = 128\nenvironment = { A = \"1\", B = \"2\" }\n[functions.b]\nruntime = \"python3.12\"\n",
        );
        let mut overlay = Overlay::default();
        overlay.push(Edit::set(&["functions", "a", "memory_size_mb"], 512));
        let mut env = toml::Table::new();
        env.insert("C".into(), "3".into());
        overlay.push(Edit::set(&["functions", "a", "environment"], env));
        overlay.push(Edit::remove(&["functions", "b"]));
        overlay.push(Edit::set(&["functions", "c", "handler"], "app.handler"));
        overlay.push(Edit::remove(&["functions", "nothing", "here"]));
        overlay.apply(&mut file);
        assert_eq!(
            file,
            table(
                "[functions.a]\nmemory_size_mb = 512\nenvironment = { C = \"3\" }\n[functions.c]\nhandler = \"app.handler\"\n"
            )
        );
    }

    #[test]
    fn a_change_drops_the_earlier_ones_it_replaces() {
        let mut overlay = Overlay::default();
        overlay.push(Edit::set(&["functions", "a", "memory_size_mb"], 512));
        overlay.push(Edit::set(&["functions", "a", "timeout_seconds"], 30));
        overlay.push(Edit::set(&["functions", "b", "timeout_seconds"], 30));
        overlay.push(Edit::remove(&["functions", "a"]));
        overlay.push(Edit::set(&["functions", "a", "handler"], "x.y"));
        assert_eq!(
            overlay.edits,
            vec![
                Edit::set(&["functions", "b", "timeout_seconds"], 30),
                Edit::remove(&["functions", "a"]),
                Edit::set(&["functions", "a", "handler"], "x.y"),
            ]
        );
        // Deleted then made again: the file's entry is gone, the new one stays.
        let mut file = table("[functions.a]\nruntime = \"python3.12\"\n");
        overlay.apply(&mut file);
        assert_eq!(
            file,
            table("[functions.a]\nhandler = \"x.y\"\n[functions.b]\ntimeout_seconds = 30\n")
        );
    }

    #[test]
    fn the_changes_round_trip_through_json() {
        let mut overlay = Overlay::default();
        overlay.push(Edit::set(&["functions", "a", "memory_size_mb"], 512));
        overlay.push(Edit::remove(&["functions", "b"]));
        let text = serde_json::to_string(&overlay).unwrap();
        assert_eq!(serde_json::from_str::<Overlay>(&text).unwrap(), overlay);
    }
}
