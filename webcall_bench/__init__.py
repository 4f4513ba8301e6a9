"""`webcall bench`: load a webcall server with synthetic publishers and lightweight players, and measure it.

Modules: runner (the run and its figures), player (ICE/DTLS/SRTP players counting clear RTP headers),
publisher (aiortc publishers that log what they send), signalling (a lean WCS client), ceiling (the minimal
Python forwarding loop), procstat (/proc), report (table and plot), cli (arguments).
"""
