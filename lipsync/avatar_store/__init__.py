"""Where registered avatars outlive a process: `disk` (a local directory with a byte budget)
or `shared` (Redis, shared by every worker and machine, in the `codec` encoding). `model`
holds what both describe: the `Avatar`, its content-derived id and the backend protocol.
`lipsync.avatars.AvatarStore` keeps the in-memory LRU in front of one of them."""
