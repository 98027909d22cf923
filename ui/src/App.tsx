import {
  ActionIcon,
  AppShell,
  Badge,
  Group,
  Indicator,
  Loader,
  NavLink,
  Popover,
  ScrollArea,
  Text,
  Title,
  Tooltip,
  useComputedColorScheme,
  useMantineColorScheme,
} from "@mantine/core";
import { ModalsProvider } from "@mantine/modals";
import { IconBell, IconLogout, IconMoon, IconSun } from "@tabler/icons-react";
import { notifications } from "@mantine/notifications";
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { lazy, Suspense, useEffect, useState, type ComponentType, type ReactNode } from "react";
import { Link, Navigate, Route, Routes, useLocation, useNavigate } from "react-router-dom";
import { followEvents } from "./api/events";
import { accessToken, api, logout, refresh } from "./api/session";
import type { Notification } from "./api/types";
import { AuthProvider, useAuth } from "./auth";
import { ResourceDetail, ResourceList } from "./components/resource";
import { notificationToast } from "./notify";
import { Login } from "./pages/Login";
import { RESOURCES } from "./resources";

/** A page's module, loaded when the page is first shown (each page is a chunk of its own). */
function page<M, K extends keyof M>(load: () => Promise<M>, name: K) {
  return lazy(async () => ({ default: (await load())[name] as ComponentType }));
}
const Dashboard = page(() => import("./pages/Dashboard"), "Dashboard");
const VmList = page(() => import("./pages/Vms"), "VmList");
const VmDetail = page(() => import("./pages/Vms"), "VmDetail");
const Tokens = page(() => import("./pages/Admin"), "Tokens");
const Audit = page(() => import("./pages/Admin"), "Audit");
const Operations = page(() => import("./pages/Admin"), "Operations");
const Events = page(() => import("./pages/Admin"), "Events");
const MyQuota = page(() => import("./pages/Admin"), "MyQuota");
const NotificationsPage = page(() => import("./pages/Admin"), "NotificationsPage");
const NotificationList = lazy(() => import("./pages/Admin").then((m) => ({ default: m.NotificationList })));
const UploadImageButton = lazy(() => import("./pages/Upload").then((m) => ({ default: m.UploadImageButton })));
const ImportContainerImageButton = lazy(() =>
  import("./pages/Upload").then((m) => ({ default: m.ImportContainerImageButton })),
);

/** Every page of the console, in the order of the navigation (the browser tests crawl it). */
export const NAV: { to: string; label: string }[] = [
  { to: "/", label: "Dashboard" },
  { to: "/vms", label: "VMs" },
  ...RESOURCES.map((r) => ({ to: `/${r.key}`, label: r.title })),
  { to: "/quota", label: "My quota" },
  { to: "/tokens", label: "API tokens" },
  { to: "/audit", label: "Audit log" },
  { to: "/operations", label: "Operations" },
  { to: "/events", label: "Events" },
  { to: "/notifications", label: "Notifications" },
];

function ThemeToggle() {
  const { setColorScheme } = useMantineColorScheme();
  const scheme = useComputedColorScheme("light");
  const next = scheme === "dark" ? "light" : "dark";
  return (
    <Tooltip label={`Switch to ${next} theme`}>
      <ActionIcon variant="default" size="lg" aria-label={`Switch to ${next} theme`} onClick={() => setColorScheme(next)}>
        {scheme === "dark" ? <IconSun size={18} /> : <IconMoon size={18} />}
      </ActionIcon>
    </Tooltip>
  );
}

/** The bell: unread count, the latest notifications; live from the event stream. */
function Bell() {
  const qc = useQueryClient();
  const [live, setLive] = useState(false);
  const summary = useQuery({
    queryKey: ["/v1/notifications/summary"],
    queryFn: () => api<{ unread: number; total: number }>("/v1/notifications/summary"),
  });
  useEffect(() => {
    const h = followEvents(
      (e) => {
        if (e.type === "notification.created") {
          const toast = notificationToast(e.payload as Partial<Notification>);
          if (toast) notifications.show(toast);
          void qc.invalidateQueries({ queryKey: ["/v1/notifications"] });
          void qc.invalidateQueries({ queryKey: ["/v1/notifications/summary"] });
        } else {
          // any change may show on the open page: refresh the queries of that resource
          const prefix = `/v1/${e.resource_type.replace(/_/g, "-")}s`;
          void qc.invalidateQueries({ predicate: (q) => String(q.queryKey[0]).startsWith(prefix) });
        }
      },
      { fetch: (...a) => fetch(...a), token: accessToken, refresh, sleep: (ms) => new Promise((r) => setTimeout(r, ms)) },
      { onStatus: setLive },
    );
    return () => h.stop();
  }, [qc]);
  const unread = summary.data?.unread ?? 0;
  return (
    // (the Indicator outside the Popover: the target, which gets aria-expanded, is the button)
    <Indicator label={unread} size={16} disabled={unread === 0} color="red">
      <Popover width={380} position="bottom-end" shadow="md">
        <Popover.Target>
          <ActionIcon variant="default" size="lg" aria-label={`Notifications (${unread} unread)`} data-testid="bell">
            <IconBell size={18} />
          </ActionIcon>
        </Popover.Target>
        <Popover.Dropdown>
          <Group justify="space-between" mb="xs">
            <Text fw={600}>Notifications</Text>
            <Badge size="xs" color={live ? "green" : "gray"} title={live ? "live updates on" : "reconnecting"}>
              {live ? "live" : "offline"}
            </Badge>
          </Group>
          <ScrollArea.Autosize mah={420}>
            <Suspense fallback={<Loader size="sm" aria-label="Loading notifications" />}>
              <NotificationList compact />
            </Suspense>
          </ScrollArea.Autosize>
          <Text component={Link} to="/notifications" size="sm" c="blue">
            All notifications and preferences
          </Text>
        </Popover.Dropdown>
      </Popover>
    </Indicator>
  );
}

function Shell({ children }: { children: ReactNode }) {
  const auth = useAuth();
  const loc = useLocation();
  const nav = useNavigate();
  const qc = useQueryClient();
  return (
    <AppShell header={{ height: 56 }} navbar={{ width: 220, breakpoint: "xs" }} padding="md">
      <a
        href="#main"
        className="skip-link"
        onClick={(e) => {
          e.preventDefault();
          document.getElementById("main")?.focus();
        }}
      >
        Skip to content
      </a>
      <AppShell.Header>
        <Group h="100%" px="md" justify="space-between">
          <Title order={3}>
            <Text component={Link} to="/" inherit>
              Nexus
            </Text>
          </Title>
          <Group>
            {auth.me && (
              <Text size="sm" data-testid="whoami">
                {auth.me.user.username} <Badge size="sm" variant="light">{auth.me.user.role}</Badge>
              </Text>
            )}
            <Bell />
            <ThemeToggle />
            <ActionIcon
              variant="default"
              size="lg"
              aria-label="Sign out"
              title="Sign out"
              onClick={() => void logout().then(() => (qc.clear(), nav("/login")))}
            >
              <IconLogout size={18} />
            </ActionIcon>
          </Group>
        </Group>
      </AppShell.Header>
      <AppShell.Navbar p="xs">
        <ScrollArea>
          <nav aria-label="Main">
            {NAV.map((n) => (
              <NavLink
                key={n.to}
                component={Link}
                to={n.to}
                label={n.label}
                active={n.to === "/" ? loc.pathname === "/" : loc.pathname.startsWith(n.to)}
              />
            ))}
          </nav>
        </ScrollArea>
      </AppShell.Navbar>
      <AppShell.Main id="main" tabIndex={-1}>
        <Suspense fallback={<Loader aria-label="Loading the page" />}>{children}</Suspense>
      </AppShell.Main>
    </AppShell>
  );
}

function RequireAuth({ children }: { children: ReactNode }) {
  const auth = useAuth();
  const loc = useLocation();
  if (!auth.signedIn) return <Navigate to="/login" replace state={{ from: loc.pathname }} />;
  return <Shell>{children}</Shell>;
}

function ImagesExtra() {
  const qc = useQueryClient();
  return <UploadImageButton onDone={() => void qc.invalidateQueries({ queryKey: ["/v1/images"] })} />;
}

function ContainerImagesExtra() {
  const qc = useQueryClient();
  return <ImportContainerImageButton onDone={() => void qc.invalidateQueries({ queryKey: ["/v1/container-images"] })} />;
}

function NotFound() {
  return (
    <div>
      <Title order={2}>Page not found</Title>
      <Text>
        There is no page at this address. <Link to="/">Go to the dashboard</Link>.
      </Text>
    </div>
  );
}

export function App() {
  return (
    <ModalsProvider>
      <AuthProvider>
        <Routes>
          <Route path="/login" element={<Login />} />
          <Route path="/" element={<RequireAuth><Dashboard /></RequireAuth>} />
          <Route path="/vms" element={<RequireAuth><VmList /></RequireAuth>} />
          <Route path="/vms/:id" element={<RequireAuth><VmDetail /></RequireAuth>} />
          {RESOURCES.map((r) => [
            <Route key={r.key} path={`/${r.key}`} element={<RequireAuth><ResourceList def={r} extraTop={r.key === "images" ? <ImagesExtra /> : r.key === "container-images" ? <ContainerImagesExtra /> : undefined} /></RequireAuth>} />,
            <Route key={`${r.key}-d`} path={`/${r.key}/:id`} element={<RequireAuth><ResourceDetail def={r} /></RequireAuth>} />,
          ])}
          <Route path="/quota" element={<RequireAuth><MyQuota /></RequireAuth>} />
          <Route path="/tokens" element={<RequireAuth><Tokens /></RequireAuth>} />
          <Route path="/audit" element={<RequireAuth><Audit /></RequireAuth>} />
          <Route path="/operations" element={<RequireAuth><Operations /></RequireAuth>} />
          <Route path="/events" element={<RequireAuth><Events /></RequireAuth>} />
          <Route path="/notifications" element={<RequireAuth><NotificationsPage /></RequireAuth>} />
          <Route path="*" element={<RequireAuth><NotFound /></RequireAuth>} />
        </Routes>
      </AuthProvider>
    </ModalsProvider>
  );
}
