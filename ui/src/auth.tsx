// Who is signed in (GET /v1/auth/me) and what their role may do.
import { useQuery } from "@tanstack/react-query";
import { createContext, useContext, useEffect, useState, type ReactNode } from "react";
import { accessToken, onSessionChange } from "./api/session";
import { api } from "./api/session";
import type { Me } from "./api/types";
import { can, type Need, type Verdict } from "./rbac";

interface AuthValue {
  me: Me | null;
  signedIn: boolean;
  can: (need: Need, ownerId?: string | null) => Verdict;
}

const Ctx = createContext<AuthValue>({ me: null, signedIn: false, can: () => ({ ok: false, reason: "" }) });

export function AuthProvider({ children }: { children: ReactNode }) {
  const [signedIn, setSignedIn] = useState(accessToken() !== null);
  useEffect(() => onSessionChange(setSignedIn), []);
  const me = useQuery({
    queryKey: ["me", signedIn],
    queryFn: () => api<Me>("/v1/auth/me"),
    enabled: signedIn,
    staleTime: 60_000,
  });
  const value: AuthValue = {
    me: signedIn ? (me.data ?? null) : null,
    signedIn,
    can: (need, ownerId) =>
      can(me.data?.user.role, need, { userId: me.data?.user.id, ownerId: ownerId ?? null }),
  };
  return <Ctx.Provider value={value}>{children}</Ctx.Provider>;
}

export function useAuth(): AuthValue {
  return useContext(Ctx);
}
