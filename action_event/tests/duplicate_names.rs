//! Two events with one name: `HelloWorldEvent` and `HelloWorld` are both
//! `hello_world`, so the registry of this binary is an error naming both.

use action_event::prelude::*;

#[derive(Serialize, Deserialize)]
#[action_event]
pub struct HelloWorldEvent {}

impl Process for HelloWorldEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

mod other {
    use action_event::prelude::*;

    #[derive(Serialize, Deserialize)]
    #[action_event]
    pub struct HelloWorld {}

    impl Process for HelloWorld {
        async fn process(self, _cx: &Context) -> Result<()> {
            Ok(())
        }
    }
}

#[test]
fn both_types_are_named() {
    assert_eq!(
        <HelloWorldEvent as action_event::Event>::NAME,
        "hello_world"
    );
    assert_eq!(
        <other::HelloWorld as action_event::Event>::NAME,
        "hello_world"
    );

    let err = action_event::registry().unwrap_err();
    assert!(matches!(err, action_event::Error::Registry(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "event registry: two events are named `hello_world`: `duplicate_names::HelloWorldEvent` and \
         `duplicate_names::other::HelloWorld`; rename one with #[action_event(name = \"...\")]"
    );
}

#[test]
fn queueing_still_works_for_unchecked_use() {
    // With no registry, `into_envelope` cannot check params; a foreign
    // event (queue stated) does not fail.
    let env = action_event::QueueRequest::foreign("hello_world")
        .queue("medium")
        .into_envelope()
        .unwrap();
    assert_eq!(env.queue, "medium");
}
