// The generated code uses absolute paths only: a user who shadows the
// prelude's names (and `core`, `std`, `serde_json`, `inventory`) still compiles.
#![allow(dead_code, non_camel_case_types)]

mod core {}
mod std {}
mod inventory {}
mod serde_json {}
mod action_event {}

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
struct Context;
struct Flow;

mod events {
    // Names the generated code must not pick up as patterns or values.
    #[allow(non_upper_case_globals)]
    const cx: () = ();
    #[allow(non_upper_case_globals)]
    const event: () = ();
    struct __ActionEventParent;

    use ::action_event::prelude::{
        Context, Deserialize, Flow, Process, Serialize, action_event, before_filter, queue,
        skip_before_filter,
    };

    #[action_event(base, queue = "low", retries = 2, timeout = "5s")]
    #[before_filter(log_params, self::log_again)]
    pub struct ApplicationEvent;

    async fn log_params(_cx: &mut Context) -> ::action_event::Result<Flow> {
        ::core::result::Result::Ok(Flow::Continue)
    }
    async fn log_again(_cx: &mut Context) -> ::action_event::Result<Flow> {
        ::core::result::Result::Ok(Flow::Continue)
    }

    #[derive(Serialize, Deserialize)]
    #[action_event(queue = "high", extends = ApplicationEvent, name = "shadowed")]
    #[skip_before_filter(log_again)]
    pub struct HelloWorldEvent {
        pub name: ::std::string::String,
    }

    impl Process for HelloWorldEvent {
        async fn process(self, _cx: &Context) -> ::action_event::Result<()> {
            ::core::result::Result::Ok(())
        }
    }

    pub async fn app() -> ::action_event::Result<()> {
        queue!(shadowed, name = "world", ids = [1, 2], meta = { "a": 1 }, queue = high, delay = "1s").await?;
        ::core::result::Result::Ok(())
    }
}

fn main() {
    let registry = ::action_event::registry().unwrap();
    ::core::assert_eq!(registry.get("shadowed").unwrap().queue, "high");
}
