import streamlit as st

st.title("elbo")
st.info("coming soon")
