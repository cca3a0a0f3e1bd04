//! What a flight is called in WebODM: project name, description, tags and task name.
//!
//! The hidden key tag `.tws-<16 hex of sha256("<system>/<flight>")>`, not the name, identifies
//! the daemon's own projects and tasks; names follow what WebODM stores (outer whitespace
//! trimmed, at most 255 characters).

use sha2::{Digest, Sha256};

use crate::engine::state::FlightKey;

/// Longest project or task name WebODM accepts, in characters.
pub const MAX_NAME_CHARS: usize = 255;

/// The hidden tag that marks this flight's project and task.
pub fn key_tag(key: &FlightKey) -> String {
    let digest = Sha256::digest(format!("{}/{}", key.system, key.flight).as_bytes());
    format!(".tws-{}", &hex::encode(digest)[..16])
}

/// `<Flight> (<SystemID>)` as WebODM stores it: trimmed, and cut to 255 characters by
/// shortening the flight part with `…` so the ` (<SystemID>)` tail stays.
pub fn project_name(key: &FlightKey) -> String {
    fit(key.flight.trim(), &format!(" ({})", key.system))
}

/// `Flight <Flight>` for the first task, `Flight <Flight> (update N)` for the N-th update
/// task; trimmed and cut like the project name.
pub fn task_name(key: &FlightKey, generation: u32) -> String {
    let tail = match generation {
        0 => String::new(),
        n => format!(" (update {n})"),
    };
    fit(&format!("Flight {}", key.flight.trim()), &tail)
}

/// The project's tags plus, for an update task, the hidden generation tag `<key tag>-u<N>`.
pub fn task_tags(key: &FlightKey, generation: u32) -> Vec<String> {
    let mut tags = tags(key);
    if generation > 0 {
        tags.push(format!("{}-u{generation}", key_tag(key)));
    }
    tags
}

/// Which of the flight's tasks a task with these tags and name is (`None`: not the daemon's).
pub fn task_generation(key: &FlightKey, tags: &[String], name: Option<&str>) -> Option<u32> {
    let key_tag = key_tag(key);
    if tags.contains(&key_tag) {
        let prefix = format!("{key_tag}-u");
        Some(
            tags.iter()
                .filter_map(|t| t.strip_prefix(&prefix)?.parse().ok())
                .max()
                .unwrap_or(0),
        )
    } else {
        // A task made without tags (tags are optional in WebODM): its exact first-task name.
        (name == Some(task_name(key, 0).as_str())).then_some(0)
    }
}

/// Tags of the project and the task: `tapis`, `flight`, the system id, the flight name
/// (whitespace → `_`), and the hidden key tag.
pub fn tags(key: &FlightKey) -> Vec<String> {
    let flight_tag: String = key
        .flight
        .trim()
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    let mut tags = vec!["tapis".to_string(), "flight".to_string()];
    for t in [key.system.replace(char::is_whitespace, "_"), flight_tag] {
        if !t.is_empty() && !tags.contains(&t) {
            tags.push(t);
        }
    }
    tags.push(key_tag(key));
    tags
}

/// The project description, with the same facts as the original integration.
pub fn description(
    key: &FlightKey,
    images_path: &str,
    image_count: u64,
    discovered: &str,
) -> String {
    format!(
        "Auto-created from Tapis system {}\nFlight: {}\nImages path: {}\nImage count: {}\nDiscovered: {}",
        key.system, key.flight, images_path, image_count, discovered
    )
}

/// `head` + `tail`, trimmed, with `head` cut (ending in `…`) so the whole fits in 255 chars.
fn fit(head: &str, tail: &str) -> String {
    let room = MAX_NAME_CHARS.saturating_sub(tail.chars().count());
    let name = if head.chars().count() <= room {
        format!("{head}{tail}")
    } else {
        let cut: String = head.chars().take(room.saturating_sub(1)).collect();
        format!("{}…{tail}", cut.trim_end())
    };
    name.trim().chars().take(MAX_NAME_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags_follow_the_design() {
        let key = FlightKey::new("ptdatax.project.alpha", "Vuelo Año 2");
        assert_eq!(project_name(&key), "Vuelo Año 2 (ptdatax.project.alpha)");
        assert_eq!(task_name(&key, 0), "Flight Vuelo Año 2");
        assert_eq!(task_name(&key, 2), "Flight Vuelo Año 2 (update 2)");
        let tags = tags(&key);
        assert_eq!(
            &tags[..4],
            ["tapis", "flight", "ptdatax.project.alpha", "Vuelo_Año_2"]
        );
        assert_eq!(tags[4], key_tag(&key));
        assert!(tags.iter().all(|t| !t.contains(' ')));
    }

    #[test]
    fn task_generations_are_read_back_from_tags() {
        let key = FlightKey::new("s", "F1");
        assert_eq!(task_generation(&key, &task_tags(&key, 0), None), Some(0));
        assert_eq!(task_generation(&key, &task_tags(&key, 3), None), Some(3));
        assert_eq!(task_generation(&key, &[], Some("Flight F1")), Some(0));
        assert_eq!(task_generation(&key, &[], Some("Flight F2")), None);
        let other = FlightKey::new("s", "F2");
        assert_eq!(task_generation(&key, &task_tags(&other, 1), None), None);
    }

    #[test]
    fn tags_are_pinned_literally() {
        // Key tags from `printf '<system>/<flight>' | sha256sum | cut -c1-16`.
        let cases = [
            (
                "ptdatax.project.alpha",
                "Vuelo Año 2",
                [
                    "tapis",
                    "flight",
                    "ptdatax.project.alpha",
                    "Vuelo_Año_2",
                    ".tws-6b6a9e60cc73deea",
                ],
            ),
            (
                "ptdatax.project.alpha-001",
                "Flight001",
                [
                    "tapis",
                    "flight",
                    "ptdatax.project.alpha-001",
                    "Flight001",
                    ".tws-a1dbc0b4ad3a42c9",
                ],
            ),
            (
                "ptdatax.project.shared-lab",
                "Flight001",
                [
                    "tapis",
                    "flight",
                    "ptdatax.project.shared-lab",
                    "Flight001",
                    ".tws-74131d79b909bbd3",
                ],
            ),
        ];
        for (system, flight, want) in cases {
            let key = FlightKey::new(system, flight);
            assert_eq!(tags(&key), want, "{system}/{flight}");
            assert_eq!(task_tags(&key, 0), want, "{system}/{flight}");
        }
        // An update task adds `<key tag>-u<N>`; outer whitespace is not part of the flight tag
        // (but is of the key, which hashes the folder name as listed).
        let key = FlightKey::new("s", "  F1 ");
        assert_eq!(
            task_tags(&key, 2),
            [
                "tapis",
                "flight",
                "s",
                "F1",
                ".tws-584b766e7a5a23e4",
                ".tws-584b766e7a5a23e4-u2"
            ]
        );
    }

    #[test]
    fn key_tag_is_sha256_prefix() {
        // `printf 's/f' | sha256sum | cut -c1-16`
        assert_eq!(key_tag(&FlightKey::new("s", "f")), ".tws-11c1593c6ab01204");
    }

    #[test]
    fn long_names_keep_the_system_tail() {
        let key = FlightKey::new("ptdatax.project.alpha", "é".repeat(400));
        let name = project_name(&key);
        assert_eq!(name.chars().count(), MAX_NAME_CHARS);
        assert!(name.ends_with("… (ptdatax.project.alpha)"), "{name}");
        assert_eq!(task_name(&key, 0).chars().count(), MAX_NAME_CHARS);
        assert!(task_name(&key, 3).ends_with("… (update 3)"));
    }

    #[test]
    fn outer_whitespace_is_trimmed_like_webodm() {
        let key = FlightKey::new("ptdatax.project.a", "  F1 ");
        assert_eq!(project_name(&key), "F1 (ptdatax.project.a)");
    }

    #[test]
    fn description_lines() {
        let key = FlightKey::new("ptdatax.project.a", "F1");
        assert_eq!(
            description(&key, "F1/code/images", 3, "2026-01-01T00:00:00Z"),
            "Auto-created from Tapis system ptdatax.project.a\nFlight: F1\nImages path: F1/code/images\nImage count: 3\nDiscovered: 2026-01-01T00:00:00Z"
        );
    }
}
