//! WeCom AI bots (智能机器人): the pieces of their protocol, apart from the self-built app's.

pub mod callback_body;
pub mod inbound;
pub mod media;
