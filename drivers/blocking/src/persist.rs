//! The Redis link of a [`Fetcher`](crate::Fetcher): runs the store's pipelines, one at a
//! time, on a thread of its own over a sync connection that is made again after a failure.
//! Each reply goes into the run loop's channel, where it wakes the loop like a hop's result.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use downpour::Request;
use downpour_common::store::{
    connection_broken, read_memory_info, worker_token, RedisOptions, Store, StoreError,
};
use downpour_common::Frontier;
use redis::{Connection, ConnectionLike, Pipeline, RedisResult, Value};

use crate::Message;

pub(crate) struct Link {
    /// To the Redis thread; dropping it (with the fetcher) ends that thread.
    pipelines: mpsc::Sender<Pipeline>,
    /// A pipeline was handed to the thread and its reply has not been read yet.
    running: bool,
}

impl Link {
    /// A store with these options, and its link. Connects once, so that a wrong URL or an
    /// unreachable server is reported at start, then starts the thread that runs the
    /// pipelines and sends the replies to `replies`.
    pub(crate) fn connect<R: Request + Send + 'static>(
        options: RedisOptions,
        replies: mpsc::Sender<Message<R>>,
    ) -> Result<(Store<R>, Link), StoreError> {
        // The options are checked before anything is tried.
        let store = Store::new(options.clone(), worker_token())?;
        let client = options.client()?;
        let timeout = options.command_timeout();
        let mut connection = open(&client, timeout).map_err(|e| options.unreachable(e))?;
        // A Redis that evicts keys when full can drop a crawl's requests: said at start.
        let info = redis::cmd("INFO")
            .arg("memory")
            .query::<String>(&mut connection);
        // Made again for the first pipeline if the INFO broke it.
        let connection = read_memory_info(&options.url, info).then_some(connection);
        let mut runner = Runner {
            client,
            timeout,
            connection,
        };
        let (pipelines, jobs) = mpsc::channel::<Pipeline>();
        std::thread::Builder::new()
            .name("downpour-redis".into())
            .spawn(move || {
                while let Ok(pipeline) = jobs.recv() {
                    let reply = runner.run(&pipeline);
                    if replies.send(Message::Redis(reply)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| options.unreachable(format!("cannot start the Redis thread: {e}")))?;
        let link = Link {
            pipelines,
            running: false,
        };
        Ok((store, link))
    }

    /// Starts the store's next pipeline, if it has one and none is running.
    pub(crate) fn start<R: Request>(&mut self, frontier: &mut Frontier<R>) {
        if self.running {
            return;
        }
        let Some(pipeline) = frontier.poll_pipeline(Instant::now()) else {
            return;
        };
        match self.pipelines.send(pipeline) {
            Ok(()) => self.running = true,
            // The thread is gone (it cannot be, short of a panic in the Redis client): the
            // store treats it as Redis going away, and gives up after its deadline.
            Err(_) => frontier.handle_reply(Err(redis::RedisError::from(std::io::Error::other(
                "the Redis thread is gone",
            )))),
        }
    }

    /// The running pipeline's reply arrived (for [`Frontier::handle_reply`]).
    pub(crate) fn replied(&mut self) {
        self.running = false;
    }
}

/// The Redis thread's side: the connection, made again when the last one failed.
struct Runner {
    client: redis::Client,
    timeout: Duration,
    connection: Option<Connection>,
}

impl Runner {
    fn run(&mut self, pipeline: &Pipeline) -> RedisResult<Vec<Value>> {
        let mut connection = match self.connection.take() {
            Some(c) => c,
            None => open(&self.client, self.timeout)?,
        };
        let reply = pipeline.query::<Vec<Value>>(&mut connection);
        if !reply.as_ref().is_err_and(connection_broken) && connection.is_open() {
            self.connection = Some(connection);
        }
        reply
    }
}

/// A connection whose every command fails after `timeout` rather than hanging on a server
/// that stopped answering.
fn open(client: &redis::Client, timeout: Duration) -> RedisResult<Connection> {
    let connection = client.get_connection_with_timeout(timeout)?;
    connection.set_read_timeout(Some(timeout))?;
    connection.set_write_timeout(Some(timeout))?;
    Ok(connection)
}
