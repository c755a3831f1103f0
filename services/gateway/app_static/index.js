// Sign in by pasting a token: the screen of its role opens with the token in the fragment.
import { claimsOf } from "./session.js";
import { alertError } from "./ui.js";

const SCREENS = { customer: "customer.html", transporter: "transporter.html", driver: "driver.html" };

document.getElementById("sign-in").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = document.getElementById("token").value.trim();
  const claims = claimsOf(token);
  if (!claims || !SCREENS[claims.role]) {
    alertError(new Error("That is not a Weelo access token."));
    return;
  }
  location.assign(`${SCREENS[claims.role]}#token=${encodeURIComponent(token)}`);
});
