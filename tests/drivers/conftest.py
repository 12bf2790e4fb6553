# Installed beside the asyncpg tests by scripts/driver-suite: a test that
# hangs (through tidepool or not) fails after a minute instead of holding
# the whole run.
import asyncpg._testbase

asyncpg._testbase.TestCaseMeta.TEST_TIMEOUT = 60
