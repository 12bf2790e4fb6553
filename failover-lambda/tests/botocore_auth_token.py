"""Prints botocore's RDS IAM auth token for fixed inputs and a frozen clock.

Used by rds_auth_botocore.rs to compare tidepool's tokens with the
reference implementation byte for byte. Run by hand as

    python botocore_auth_token.py HOST PORT USER REGION KEY_ID SECRET TOKEN EPOCH

with TOKEN "" for long-term keys and EPOCH the signing time in Unix seconds.
botocore reads the time through `datetime.datetime.utcnow()` in
botocore.auth (and botocore.signers for some signers); both modules'
`datetime` are replaced with a copy whose clock is frozen.
"""

import datetime
import sys
import types
from unittest import mock

import botocore.auth
import botocore.session
import botocore.signers

host, port, user, region, key_id, secret, token, epoch = sys.argv[1:9]
FIXED = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=int(epoch))


class FrozenDateTime(datetime.datetime):
    @classmethod
    def utcnow(cls):
        return FIXED

    @classmethod
    def now(cls, tz=None):
        if tz is None:
            return FIXED
        return FIXED.replace(tzinfo=datetime.timezone.utc).astimezone(tz)


frozen = types.ModuleType("datetime")
frozen.__dict__.update(datetime.__dict__)
frozen.datetime = FrozenDateTime

client = botocore.session.get_session().create_client(
    "rds",
    region_name=region,
    aws_access_key_id=key_id,
    aws_secret_access_key=secret,
    aws_session_token=token or None,
)
with mock.patch.object(botocore.auth, "datetime", frozen), mock.patch.object(
    botocore.signers, "datetime", frozen
):
    print(client.generate_db_auth_token(host, int(port), user, Region=region))
