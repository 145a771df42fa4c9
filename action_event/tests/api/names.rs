//! Event names: the struct name in snake case without its `Event` suffix,
//! unless `name = "..."` says otherwise. (`HelloWorld` and `HelloWorldEvent`
//! are both `hello_world`: see `duplicate_names.rs`, where they meet.)

use action_event::Event as _;
use action_event::Registry;
use action_event::prelude::*;

fn registry() -> &'static Registry {
    action_event::registry().expect("the events of this file are consistent")
}

macro_rules! event {
    ($(#[$m:meta])* $name:ident) => {
        #[derive(Serialize, Deserialize)]
        $(#[$m])*
        pub struct $name {}
        impl Process for $name {
            async fn process(self, _cx: &Context) -> Result<()> {
                Ok(())
            }
        }
    };
}

event!(
    #[action_event]
    HelloWorldEvent
);
event!(
    #[action_event]
    GoodbyeWorld
);
event!(
    #[action_event]
    SendHTMLEmailEvent
);
event!(
    #[action_event]
    Event
);
event!(
    #[action_event(name = "billing.invoice_paid")]
    InvoicePaidEvent
);
event!(
    #[action_event(name = "ping")]
    r#Pong
);

#[test]
fn the_event_suffix_is_dropped_and_the_rest_is_snake_case() {
    assert_eq!(
        <HelloWorldEvent as action_event::Event>::NAME,
        "hello_world"
    );
    assert_eq!(GoodbyeWorld::NAME, "goodbye_world");
    assert_eq!(SendHTMLEmailEvent::NAME, "send_html_email");
    // A struct named just `Event` keeps its name.
    assert_eq!(<Event as action_event::Event>::NAME, "event");
}

#[test]
fn name_overrides() {
    assert_eq!(InvoicePaidEvent::NAME, "billing.invoice_paid");
    assert_eq!(Pong::NAME, "ping");
}

#[test]
fn the_registry_uses_the_same_names() {
    // The events of this module (the binary has others: see `main.rs`).
    let ours: Vec<String> = registry()
        .names()
        .into_iter()
        .filter(|n| {
            registry()
                .get(n)
                .unwrap()
                .type_name
                .starts_with("api::names::")
        })
        .collect();
    assert_eq!(
        ours,
        [
            "billing.invoice_paid",
            "event",
            "goodbye_world",
            "hello_world",
            "ping",
            "send_html_email"
        ]
    );
    assert_eq!(
        registry().get("hello_world").unwrap().type_name,
        "api::names::HelloWorldEvent"
    );
    assert_eq!(
        registry().get_type::<InvoicePaidEvent>().unwrap().name,
        "billing.invoice_paid"
    );
    assert!(registry().get("invoice_paid").is_none());
}
