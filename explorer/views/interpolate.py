import streamlit as st

st.title("interpolate")
st.info("coming soon")
