URL=${TTC_SERVE_URL:-http://127.0.0.1:8000/v1}
curl -s "$URL/chat/completions" \
  -H "Authorization: Bearer ${TTC_SERVE_KEY:-none}" \
  -H "Content-Type: application/json" \
  -d '{
        "model": "ttc/self_consistency",
        "messages": [{"role": "user", "content": "What is 12 + 30? answer=42"}],
        "n": 5,
        "ttc": {"budget": {"tokens": 2000}}
      }'
