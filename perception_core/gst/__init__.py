"""GStreamer front end: any source -> frame processor -> overlay -> any sink (`mobius gst`)."""
