"""The agent: PID 1 inside every sandbox, serving ``sandbank.protocol.agent`` on
a unix socket.

It runs under the sandbox's own python3 with only this package, ``sandbank.errors``
and ``sandbank.protocol`` on its path, so it imports nothing else from the
project and nothing outside the standard library.

    server     the socket, one thread per connection, signals, start-up
    conn       a connection, the log, ``sandbank.errors`` imported on demand
    reaper     waits for every process in the sandbox (PID 1's duty)
    processes  ``exec``
    jobs       background processes: their records, output files and pumps
    jobops     ``start``, ``jobs``, ``attach``, ``wait``, ``stdin``, ``signal``
    spawn      starting a command as a user (posix_spawn from a switched thread)
    files      ``read``, ``write``, ``list``, ``stat``, ``move``, ``mkdir``, ``remove``
    system     ``hostname``
    base       what they share: users, paths, entries, errno -> error code

Only ``server`` and ``conn`` (and the wire format) are loaded before the agent's
first answer: every sandbox start waits for them. The rest loads right after.
"""
