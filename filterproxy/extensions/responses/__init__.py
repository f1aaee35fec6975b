"""responses: the Responses API's stored conversations (``previous_response_id``,
``GET``/``DELETE /v1/responses/{id}``)."""
