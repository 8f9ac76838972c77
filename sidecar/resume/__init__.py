"""Resume: a run that outlives its client, and the clients that follow it.

entry.py starts runs and reattaches reconnects (the route's registry of its
runs lives there); run.py is a stream whose Sink is the session's replay log;
follower.py is one client reading that log.
"""
