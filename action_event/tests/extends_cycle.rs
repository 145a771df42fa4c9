//! Two bases that extend each other: the registry is an error naming both.

use action_event::prelude::*;

#[action_event(base, extends = Second)]
pub struct First;

#[action_event(base, extends = First)]
pub struct Second;

/// An event below the cycle does not add errors of its own.
#[derive(Serialize, Deserialize)]
#[action_event(extends = Second)]
pub struct AnEvent {}

impl Process for AnEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

#[test]
fn the_cycle_is_reported_once_naming_both() {
    let err = action_event::registry().unwrap_err().to_string();
    assert_eq!(
        err,
        "event registry: `extends` forms a cycle: extends_cycle::First extends extends_cycle::Second extends extends_cycle::First"
    );
}
