//! Address movers for tidepool on AWS.
