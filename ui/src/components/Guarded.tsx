// A button the role may not press is disabled, with the reason in a tooltip.
import { Button, Tooltip, type ButtonProps } from "@mantine/core";
import type { ReactNode } from "react";
import type { Verdict } from "../rbac";

export function GuardedButton({
  verdict,
  children,
  onClick,
  ...props
}: ButtonProps & { verdict: Verdict; children: ReactNode; onClick?: () => void }) {
  if (verdict.ok) {
    return (
      <Button {...props} onClick={onClick}>
        {children}
      </Button>
    );
  }
  return (
    <Tooltip label={verdict.reason} withArrow>
      <Button {...props} data-disabled aria-disabled="true" title={verdict.reason} onClick={(e) => e.preventDefault()}>
        {children}
      </Button>
    </Tooltip>
  );
}
