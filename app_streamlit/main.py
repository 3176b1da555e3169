"""captum-topk dashboard: ``streamlit run app_streamlit/main.py``.

Pages (st.navigation): Top-k patches (default), Microscope, Filters, Compare, Embeddings, Concepts,
Data and jobs.
The sidebar picks the run every page shows. All computation is in captum_topk.dashboard;
see docs/dashboard.md.
"""

import streamlit as st

st.set_page_config(page_title="captum-topk", page_icon=":material/image_search:", layout="wide")
for option, value in (("client.showErrorDetails", "none"),  # pages show short st.error messages, never a traceback
                      ("client.toolbarMode", "viewer")):  # no "Deploy" button
    try:
        st.set_option(option, value)
    except Exception:  # an older Streamlit where it cannot be set at run time
        pass

# Private by default: `captum-topk dashboard` / `make run` bind 127.0.0.1. Say so when it is not.
_address = st.get_option("server.address")
if _address not in ("127.0.0.1", "localhost", "::1"):
    st.warning(
        f"This dashboard listens on {'every network interface' if not _address or _address in ('0.0.0.0', '::') else _address}: "
        "anyone who can reach this machine can browse the configured data and run folders and start mining "
        "jobs. Serve it on 127.0.0.1 (the default of `make run`), or put it behind an authenticating reverse "
        "proxy (README, 'Security and robustness').", icon=":material/public:")

pages = [
    st.Page("pages/topk.py", title="Top-k patches", icon=":material/grid_view:", default=True),
    st.Page("pages/microscope.py", title="Microscope", icon=":material/biotech:"),
    st.Page("pages/filters.py", title="Filters", icon=":material/tune:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("pages/embeddings.py", title="Embeddings", icon=":material/scatter_plot:"),
    st.Page("pages/concepts.py", title="Concepts", icon=":material/hub:"),
    st.Page("pages/data_jobs.py", title="Data and jobs", icon=":material/construction:"),
]
nav = st.navigation(pages)

nav.run()  # each page draws the sidebar (run picker) itself: _common.sidebar()
