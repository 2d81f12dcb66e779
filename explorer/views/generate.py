import streamlit as st

st.title("generate")
st.info("coming soon")
