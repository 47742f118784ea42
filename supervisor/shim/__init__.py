"""The per-session shim: the real parent of a session's command.

Standard library only, so it starts fast. The daemon starts one per session as
``python -m supervisor.shim SESSION_DIR``; it reads ``spec.json`` there (only from a
directory, a spec and a FIFO of its own user's that nobody else can write to: whoever
could would choose the command it runs), starts the command in its own process
group, and copies everything the command writes into the spool (see spool.py), in
the order it read it. It holds the command's stdin open through a FIFO, so the
daemon can come and go without the command ever seeing EOF, SIGPIPE or a blocked
write. Its last record is the command's exit status.

- __main__: the entry point: the session directory and spec checked, signals set
- loop: Shim, the one event loop over the pipes, the FIFO and the command's exit
- command: starting the command (spec, cwd, env, process group, START), passing
  signals on, reaping it and ending its group, the EXIT record
- output: the command's stdout and stderr cut into records of whole lines
- stdin: the pump from the daemon's input FIFO to the command's stdin
- terminal: a tty session's pseudo-terminal, whose master the shim holds
- spoolwait: how the shim spends the spool's waits for room (a full disk): named
  blocked, still reaping its command

Nothing is imported here: ``python -m supervisor.shim`` loads this package first, and
each module imports only what it needs.
"""
