"""The raw event log: the one input format of everything downstream.

A log is a folder::

    events.parquet      one row per event (EVENT_SCHEMA), sorted by (ts_ms, exposure_id)
    users.parquet       USER_SCHEMA
    authors.parquet     AUTHOR_SCHEMA
    lives.parquet       LIVE_SCHEMA   (live rooms: author, category, start/end)
    videos.parquet      VIDEO_SCHEMA  (short videos: author, category, tag, duration)
    _oracle/            optional ground truth (simulated worlds only), see ORACLE_*_SCHEMA

Every event belongs to an *exposure* (one impression of one item to one user), named by
``exposure_id``; the exposure's first row is its ``exposure`` event and every other event of
the exposure happens at or after it. ``value`` carries the event's magnitude:

=============  ===========  ===============================================
event          domains      value
=============  ===========  ===============================================
exposure       both         0
click          live         0 (the user entered the live room)
watch_end      both         live: seconds watched (the user left the room);
                            short_video: seconds played (>= 0, may exceed the
                            video's duration_s on replays)
like           both         0
comment        live         0
gift           live         gift value (> 0, heavy tailed)
follow         both         0
=============  ===========  ===============================================

This module is the only place these names and types are declared.
"""

from __future__ import annotations

import pyarrow as pa

LIVE = "live"
SHORT_VIDEO = "short_video"
DOMAINS = (LIVE, SHORT_VIDEO)

EXPOSURE = "exposure"
CLICK = "click"
WATCH_END = "watch_end"
LIKE = "like"
COMMENT = "comment"
GIFT = "gift"
FOLLOW = "follow"
EVENTS = (EXPOSURE, CLICK, WATCH_END, LIKE, COMMENT, GIFT, FOLLOW)

# Which events may occur in which domain.
DOMAIN_EVENTS = {
    LIVE: frozenset({EXPOSURE, CLICK, WATCH_END, LIKE, COMMENT, GIFT, FOLLOW}),
    SHORT_VIDEO: frozenset({EXPOSURE, WATCH_END, LIKE, FOLLOW}),
}

# Stable small-integer codes, used wherever events/domains travel as arrays.
DOMAIN_CODE = {d: i for i, d in enumerate(DOMAINS)}
EVENT_CODE = {e: i for i, e in enumerate(EVENTS)}

EVENT_SCHEMA = pa.schema([
    pa.field("ts_ms", pa.int64(), nullable=False),        # event time, ms since epoch
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("exposure_id", pa.int64(), nullable=False),  # groups the events of one impression
    pa.field("domain", pa.string(), nullable=False),      # one of DOMAINS
    pa.field("item_id", pa.int64(), nullable=False),      # live_id or video_id
    pa.field("author_id", pa.int64(), nullable=False),
    pa.field("event", pa.string(), nullable=False),       # one of EVENTS
    pa.field("value", pa.float64(), nullable=False),      # see the table above
])

USER_SCHEMA = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("age_bucket", pa.int32(), nullable=False),
    pa.field("gender", pa.int32(), nullable=False),
    pa.field("activity_bucket", pa.int32(), nullable=False),
])

AUTHOR_SCHEMA = pa.schema([
    pa.field("author_id", pa.int64(), nullable=False),
    pa.field("category", pa.int32(), nullable=False),
    pa.field("fans_bucket", pa.int32(), nullable=False),
    pa.field("is_live_author", pa.bool_(), nullable=False),
    pa.field("is_video_author", pa.bool_(), nullable=False),
])

LIVE_SCHEMA = pa.schema([
    pa.field("live_id", pa.int64(), nullable=False),
    pa.field("author_id", pa.int64(), nullable=False),
    pa.field("category", pa.int32(), nullable=False),
    pa.field("start_ms", pa.int64(), nullable=False),
    pa.field("end_ms", pa.int64(), nullable=False),
])

VIDEO_SCHEMA = pa.schema([
    pa.field("video_id", pa.int64(), nullable=False),
    pa.field("author_id", pa.int64(), nullable=False),
    pa.field("category", pa.int32(), nullable=False),
    pa.field("tag", pa.int32(), nullable=False),
    pa.field("duration_s", pa.float32(), nullable=False),
])

# Ground truth written by the simulator (absent for real logs).
ORACLE_HIGHLIGHT_SCHEMA = pa.schema([
    pa.field("live_id", pa.int64(), nullable=False),
    pa.field("start_ms", pa.int64(), nullable=False),
    pa.field("end_ms", pa.int64(), nullable=False),
    pa.field("strength", pa.float32(), nullable=False),
])

ORACLE_EXPOSURE_SCHEMA = pa.schema([
    pa.field("exposure_id", pa.int64(), nullable=False),
    pa.field("p_click", pa.float32(), nullable=False),              # true click probability
    pa.field("p_click_no_highlight", pa.float32(), nullable=False),  # same, highlight term off
    pa.field("p_click_no_affinity", pa.float32(), nullable=False),   # same, user-author affinity off
    pa.field("in_highlight", pa.bool_(), nullable=False),
])

EVENTS_FILE = "events.parquet"
SIDE_TABLES = {
    "users.parquet": USER_SCHEMA,
    "authors.parquet": AUTHOR_SCHEMA,
    "lives.parquet": LIVE_SCHEMA,
    "videos.parquet": VIDEO_SCHEMA,
}
ORACLE_DIR = "_oracle"
ORACLE_TABLES = {
    "highlights.parquet": ORACLE_HIGHLIGHT_SCHEMA,
    "exposures.parquet": ORACLE_EXPOSURE_SCHEMA,
}
