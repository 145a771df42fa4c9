// The example of DESIGN.md ("What a user writes"), as written there.
use action_event::prelude::*;

pub struct Db;
pub struct Tenant(pub u64);
impl Db {
    async fn tenant(&self, id: u64) -> Result<Tenant> {
        Ok(Tenant(id))
    }
}

/// Every event of the app runs these filters first.
#[action_event(base)]
#[before_filter(log_params, load_tenant)]
pub struct ApplicationEvent;

async fn log_params(cx: &mut Context) -> Result<Flow> {
    println!("{}", cx.params());
    Ok(Flow::Continue)
}
async fn load_tenant(cx: &mut Context) -> Result<Flow> {
    let db = cx.state::<Db>()?; // the app's own environment
    let tenant = db.tenant(cx.param("tenant_id")?).await?;
    cx.insert(tenant);
    Ok(Flow::Continue) // Flow::Halt skips the event, acked and logged
}

#[derive(Debug, Serialize, Deserialize)]
#[action_event(queue = "high", extends = ApplicationEvent)]
#[skip_before_filter(load_tenant)]
pub struct HelloWorldEvent {
    pub name: String,
}

impl Process for HelloWorldEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        println!("hello {}", self.name);
        Ok(())
    }
}

#[allow(dead_code)]
async fn app() -> Result<()> {
    queue!(hello_world, name = "world").await?; // default queue of the handler, else medium
    queue!(send_email, people_ids = [1, 2, 3], queue = high).await?;
    HelloWorldEvent {
        name: "world".into(),
    }
    .queue()
    .await?; // typed, checked by the compiler
    Ok(())
}

fn main() {
    let registry = action_event::registry().unwrap();
    let hello = registry.get("hello_world").unwrap();
    assert_eq!(hello.queue, "high");
    let chain: Vec<&str> = hello.chain.iter().map(|f| f.path).collect();
    assert_eq!(chain, ["log_params"]);
}
