"""Dose and reconstruction comparison of CT series: grouping, measurements, statistics, report."""
