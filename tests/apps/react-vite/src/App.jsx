import { useState } from "react";

const GREETING = "hello from react";

export default function App() {
  const [count, setCount] = useState(0);
  return (
    <main>
      <h1>{GREETING}</h1>
      <button onClick={() => setCount(count + 1)}>clicked {count} times</button>
    </main>
  );
}
