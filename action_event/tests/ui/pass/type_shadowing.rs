// The generated code uses absolute paths only: a user whose module shadows
// the prelude's names, the primitive types, and the crates `core`, `std`,
// `serde_json` and `inventory` still compiles. The events live in the same
// module as the shadowing names.
//
// serde's derives do not survive shadowed primitives (`u64`, `str`), so the
// event's serde impls are written by hand here, forwarding to a derived
// twin in a module without the shadows.
#![allow(dead_code, non_camel_case_types, non_upper_case_globals)]
#![deny(unused_imports)]

use ::action_event::prelude::{
    Context, Deserialize, Flow, Process, Serialize, action_event, before_filter, queue,
    skip_before_filter,
};

mod core {}
mod std {}
mod inventory {}
mod serde_json {}
mod __private {}

type Result = ();
type Option = ();
type Some = ();
type None = ();
type Box = ();
type Send = ();
type Sync = ();
type Pin = ();
type Future = ();
type String = ();
type Vec = ();
type Ok = ();
type Err = ();
type TypeId = ();
type str = ();
type u32 = ();
type u64 = ();
type bool = ();
type Event = ();
type BaseEvent = ();

// Names the generated code must not pick up as patterns or values.
const cx: () = ();
const event: () = ();
struct __ActionEventParent;

#[action_event(base, queue = "low", retries = 2, timeout = "5s")]
#[before_filter(log_params, self::log_again)]
pub struct ApplicationEvent;

async fn log_params(_cx: &mut Context) -> ::action_event::prelude::Result<Flow> {
    ::core::result::Result::Ok(Flow::Continue)
}
async fn log_again(_cx: &mut Context) -> ::action_event::prelude::Result<Flow> {
    ::core::result::Result::Ok(Flow::Continue)
}

#[action_event(queue = "high", extends = ApplicationEvent, name = "shadowed")]
#[skip_before_filter(log_again)]
pub struct HelloWorldEvent {
    pub name: ::std::string::String,
}

mod wire {
    #[derive(::serde::Serialize, ::serde::Deserialize)]
    pub struct HelloWorld {
        pub name: ::std::string::String,
    }
}

impl Serialize for HelloWorldEvent {
    fn serialize<S: ::serde::Serializer>(
        &self,
        s: S,
    ) -> ::core::result::Result<S::Ok, S::Error> {
        let twin = wire::HelloWorld {
            name: ::core::clone::Clone::clone(&self.name),
        };
        Serialize::serialize(&twin, s)
    }
}

impl<'de> Deserialize<'de> for HelloWorldEvent {
    fn deserialize<D: ::serde::Deserializer<'de>>(
        d: D,
    ) -> ::core::result::Result<Self, D::Error> {
        let twin: wire::HelloWorld = Deserialize::deserialize(d)?;
        ::core::result::Result::Ok(HelloWorldEvent { name: twin.name })
    }
}

impl Process for HelloWorldEvent {
    async fn process(self, _cx: &Context) -> ::action_event::prelude::Result<()> {
        ::core::result::Result::Ok(())
    }
}

pub async fn app() -> ::action_event::prelude::Result<()> {
    queue!(
        shadowed,
        name = "world",
        ids = [1, 2],
        meta = { "a": 1 },
        queue = high,
        delay = "1s"
    )
    .await?;
    ::core::result::Result::Ok(())
}

fn main() {
    let registry = ::action_event::registry().unwrap();
    let hello = registry.get("shadowed").unwrap();
    ::core::assert_eq!(hello.queue, "high");
    ::core::assert_eq!(hello.retries, 2);
    let chain: ::std::vec::Vec<&::core::primitive::str> = hello.chain.iter().map(|f| f.path).collect();
    ::core::assert_eq!(chain, ["log_params"]);
}
