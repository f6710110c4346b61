"""A process that keeps a random number in memory only and counts, for
checkpoint tests: SIGUSR1 makes it write ``<secret> <count>`` to /tmp/report."""

HOLDER = r"""
import os, random, signal, time
secret = random.getrandbits(60)
count = 0
def report(*_):
    with open('/tmp/report.tmp', 'w') as fh:
        fh.write(f'{secret} {count}')
    os.rename('/tmp/report.tmp', '/tmp/report')
signal.signal(signal.SIGUSR1, report)
open('/tmp/holder.pid', 'w').write(str(os.getpid()))
while True:
    count += 1
    time.sleep(0.02)
"""

#: Shell that starts the holder in the background and waits until it runs.
START = (
    "cat > /tmp/holder.py <<'EOF'\n" + HOLDER + "\nEOF\n"
    "nohup python3 /tmp/holder.py >/dev/null 2>&1 &\n"
    "for i in $(seq 200); do test -s /tmp/holder.pid && break; sleep 0.02; done"
)

#: Shell that asks the holder for its report and prints it.
ASK = (
    "rm -f /tmp/report; kill -USR1 $(cat /tmp/holder.pid); "
    "for i in $(seq 200); do test -s /tmp/report && break; sleep 0.02; done; cat /tmp/report"
)
