use action_event::prelude::*;

struct User {
    name: String,
}

async fn app(user: User) -> Result<()> {
    println!("{}", user.name);
    queue!(welcome, user = user).await?;
    Ok(())
}

fn main() {}
